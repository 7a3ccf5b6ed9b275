#!/usr/bin/env bash
# The GPU test run: every test marked "gpu" (pytest -m gpu tests) with a JSON summary of the run
# (per test: outcome, seconds, skip/failure reason, recorded cosines and errors; the machine).
# Usage: scripts/gpu_tests.sh OUT.json [extra pytest arguments, e.g. a subset of paths]
# Runs from the repository root with the python on PATH (PYTHON overrides it) and this checkout
# first on PYTHONPATH, so it works on a GPU image without `pip install -e .`. Needs fair-esm, duckdb,
# hypothesis and biopython importable (the last two only so every test module collects); torchao
# for the fp8 cases, which skip with the reason otherwise. See docs/testing.md.
set -u
out=${1:?usage: scripts/gpu_tests.sh OUT.json [pytest args]}; shift
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
# A module that cannot be imported here (a CPU-only dependency missing) must not cancel the GPU run:
# collection errors are listed in the summary and make the exit status non-zero.
paths=("$@")
[ ${#paths[@]} -eq 0 ] && paths=(tests)
exec "$py" -m pytest -m gpu -p no:cacheprovider --continue-on-collection-errors -rs \
  --results-json "$out" "${paths[@]}"
