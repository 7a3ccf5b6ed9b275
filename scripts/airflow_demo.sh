#!/usr/bin/env bash
# The demo: one in-process run of the nightly DAG (`airflow dags test`) on a fresh SQLite
# AIRFLOW_HOME with the offline demo models: prepare -> shard -> embed -> classify -> merge ->
# record, v1-vs-v2 equivalence, benchmarks, DuckDB ingestion, HTML report.
#
# Usage: scripts/airflow_demo.sh [OUT_DIR]   (default out/demo)
# Environment (optional): DEMO_INPUT (default examples/demo.fa), DEMO_SKIP_BENCHMARKS=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
OUT="$(mkdir -p "${1:-out/demo}" && cd "${1:-out/demo}" && pwd)"
INPUT="$(cd "$(dirname "${DEMO_INPUT:-examples/demo.fa}")" && pwd)/$(basename "${DEMO_INPUT:-examples/demo.fa}")"
SKIP_BENCH=false
[ "${DEMO_SKIP_BENCHMARKS:-0}" = "1" ] && SKIP_BENCH=true

# The DAG only reads and writes below these roots (docs/airflow.md, "Where a run may read and write").
export VIRNUCPRO_INPUT_ROOT="${VIRNUCPRO_INPUT_ROOT:-$(dirname "$INPUT")}"
export VIRNUCPRO_OUTPUT_ROOT="${VIRNUCPRO_OUTPUT_ROOT:-$OUT}"
export VIRNUCPRO_METRICS_ROOT="${VIRNUCPRO_METRICS_ROOT:-$OUT}"

HOME_DIR="$OUT/airflow_home"
rm -rf "$HOME_DIR" "$OUT/run"
source "$ROOT/scripts/airflow_env.sh" "$HOME_DIR"
LOG="$OUT/airflow_dags_test.log"

echo "==> airflow db migrate (fresh SQLite metadata DB in $AIRFLOW_HOME)"
"$AIRFLOW" db migrate >"$OUT/airflow_db_migrate.log" 2>&1 || { tail -n 30 "$OUT/airflow_db_migrate.log" >&2; exit 1; }

CONF="$(printf '{"input_path": "%s", "output_dir": "%s", "demo": true, "gpu_slots": 0, "precision": "auto", "metrics_db": "%s", "skip_benchmarks": %s, "fail_on_regression": false}' \
    "$INPUT" "$OUT/run" "$OUT/metrics.duckdb" "$SKIP_BENCH")"
echo "==> airflow dags test virnucpro_nightly (log: $LOG)"
echo "    conf: $CONF"
set +e
"$AIRFLOW" dags test virnucpro_nightly --conf "$CONF" >"$LOG" 2>&1
rc=$?
set -e
# One line per task with its final state and seconds, read from the `dags test` log.
"$(dirname "$AIRFLOW")/python" - "$LOG" <<'PY' || true
import re, sys
from datetime import datetime
names, states, start, end = {}, {}, {}, {}
stamp = lambda line: datetime.fromisoformat(line[:26])
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"running task <TaskInstance: [\w.]+?\.(\w+) .*ti_id=([\w-]+)", line)
    if m:
        names[m.group(2)] = m.group(1)
        start.setdefault(m.group(1), stamp(line))
    m = re.search(r"new_state=(\w+).*ti_id=([\w-]+)", line)
    if m and m.group(2) in names:
        states[names[m.group(2)]] = m.group(1)
        end[names[m.group(2)]] = stamp(line)
for task, state in states.items():
    print(f"    {task:<12} {state:<15} {(end[task] - start[task]).total_seconds():6.1f} s")
PY
REPORT="$OUT/run/report.html"
if [ -f "$OUT/run/prediction_results.txt" ]; then
    echo "predictions: $OUT/run/prediction_results.txt"
    echo "             $OUT/run/prediction_results_highestscore.csv"
fi
if [ ! -f "$REPORT" ]; then
    echo "error: the demo run did not produce $REPORT; see $LOG" >&2
    tail -n 40 "$LOG" >&2
    exit 1
fi
# One line: equivalence pass/fail and the regressions beyond noise by name (informational here:
# the demo runs with fail_on_regression off, so only an equivalence failure turns it red).
VERDICT="$("$(dirname "$AIRFLOW")/python" -c 'import sys; from validation.report import verdict_line; print(verdict_line(sys.argv[1]))' \
    "$OUT/run" 2>/dev/null || echo "unavailable (see $LOG)")"
if [ "$rc" -ne 0 ] || grep -q "DagRun Finished: .*state=failed" "$LOG"; then
    echo "the nightly run FAILED a check (see the report and $LOG)" >&2
    echo "verdict: $VERDICT"
    echo "report: $REPORT"
    exit 1
fi
echo "verdict: $VERDICT"
echo "report: $REPORT"
