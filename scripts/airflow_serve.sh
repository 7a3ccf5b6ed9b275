#!/usr/bin/env bash
# Start a local Airflow 3 (api-server, scheduler, dag-processor, triggerer) that listens on
# 127.0.0.1 only, with the virnucpro DAGs and a "gpu" pool. Ctrl-C stops every part.
#
# Environment (all optional):
#   AIRFLOW_HOME_DIR  metadata DB, logs, generated passwords (default: out/airflow_home)
#   AIRFLOW_PORT      api-server port on 127.0.0.1 (default: 8080)
#   GPU_SLOTS         size of the "gpu" pool (default: number of GPUs nvidia-smi lists, else 1)
#   CELERY_WORKER_QUEUES  with AIRFLOW__CORE__EXECUTOR=CeleryExecutor: one local Celery worker per
#                     entry, e.g. "default gpu" (workers on other hosts: see docs/airflow.md)
#   AIRFLOW__*        any Airflow setting (scripts/airflow_env.sh sets small-machine defaults)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
PORT="${AIRFLOW_PORT:-8080}"
source "$ROOT/scripts/airflow_env.sh" "${AIRFLOW_HOME_DIR:-$ROOT/out/airflow_home}"

# Tasks reach the api-server's execution API; the UI builds its links from the base URL.
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$PORT/execution/}"

if [ -z "${GPU_SLOTS:-}" ]; then
    GPU_SLOTS="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
    [ "${GPU_SLOTS:-0}" -gt 0 ] || GPU_SLOTS=1
fi

# The generated airflow.cfg holds a 16-byte JWT secret (PyJWT warns about it); keep a longer one
# per AIRFLOW_HOME so that every component signs and checks task tokens with the same key.
if [ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]; then
    [ -s "$AIRFLOW_HOME/jwt_secret" ] || (umask 077; od -An -N64 -tx1 /dev/urandom | tr -d ' \n' >"$AIRFLOW_HOME/jwt_secret")
    export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME/jwt_secret")"
fi

LOGS="$AIRFLOW_HOME/logs/services"
mkdir -p "$LOGS"
"$AIRFLOW" db migrate >"$LOGS/db-migrate.log" 2>&1 || { cat "$LOGS/db-migrate.log" >&2; exit 1; }
# the DAGs refuse a gpu_slots larger than the pool (VIRNUCPRO_GPU_POOL_SIZE, read by the tasks)
export VIRNUCPRO_GPU_POOL_SIZE="$GPU_SLOTS"
"$AIRFLOW" pools set gpu "$GPU_SLOTS" "GPUs for the embed tasks (one slot per GPU)" \
    >"$LOGS/pools.log" 2>&1 || { cat "$LOGS/pools.log" >&2; exit 1; }

PIDS=()
stop() {  # TERM every part, give them 20 s to finish cleanly, then KILL what is left
    trap - INT TERM EXIT
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.5
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

start() {  # name, airflow sub-command and options
    local name="$1"; shift
    "$AIRFLOW" "$@" >"$LOGS/$name.log" 2>&1 &
    PIDS+=("$!")
}
start api-server api-server --host 127.0.0.1 --port "$PORT" --workers 1
start scheduler scheduler --skip-serve-logs
start dag-processor dag-processor
start triggerer triggerer --skip-serve-logs
for queue in ${CELERY_WORKER_QUEUES:-}; do
    start "celery-$queue" celery worker --queues "$queue" --concurrency 1 --skip-serve-logs \
        --celery-hostname "$queue@%h"
done

URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 120); do
    if "$(dirname "$AIRFLOW")/python" -c "import urllib.request as u; u.urlopen('$URL/api/v2/monitor/health', timeout=2)" \
        >/dev/null 2>&1; then break; fi
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "error: an Airflow process exited; logs in $LOGS" >&2; exit 1; }
    done
    sleep 1
done
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
Airflow is up at $URL (127.0.0.1 only); AIRFLOW_HOME=$AIRFLOW_HOME, logs in $LOGS
  pool "gpu": $GPU_SLOTS slot(s)
  log in as "admin"; the password is in $PASSWORDS:
    $(cat "$PASSWORDS" 2>/dev/null || echo "(not written yet: see $LOGS/api-server.log)")
  DAGs start paused: unpause virnucpro_predict in the UI (or 'airflow dags unpause virnucpro_predict'
  with the same AIRFLOW_HOME), then "Trigger" opens the parameter form. Ctrl-C stops everything.
MSG
wait -n "${PIDS[@]}" || true
echo "an Airflow process exited; stopping the others (logs in $LOGS)" >&2
