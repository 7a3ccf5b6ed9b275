#!/usr/bin/env bash
# Run GPU benchmark scripts one after another on a CUDA machine and collect their JSON.
# Usage: benchmarks/gpu/run.sh OUTDIR SCRIPT.py[:timeout_s] ...
# Each script gets `--out OUTDIR/<name>.json`; its full log goes to OUTDIR/<name>.log.
set -u
out=${1:?usage: run.sh OUTDIR SCRIPT.py[:timeout_s] ...}; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
status=0
for spec in "$@"; do
  script=${spec%%:*}; limit=${spec#*:}; [ "$limit" = "$spec" ] && limit=400
  name=$(basename "$script" .py)
  [ "$name" = common ] && continue  # shared helpers, not a benchmark (a plain *.py glob includes it)
  echo "=== $name (limit ${limit}s)"
  start=$(date +%s)
  timeout "$limit" python3 "$script" --out "$out/$name.json" >"$out/$name.log" 2>&1
  rc=$?
  echo "--- $name rc=$rc in $(( $(date +%s) - start ))s"
  tail -25 "$out/$name.log"
  [ $rc -eq 0 ] || status=1
done
exit $status
