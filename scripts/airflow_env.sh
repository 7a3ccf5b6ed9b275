# Shared Airflow settings for scripts/airflow_demo.sh and scripts/airflow_serve.sh.
# Usage: source scripts/airflow_env.sh AIRFLOW_HOME_DIR
# Everything set here only concerns the airflow processes these scripts start; values already in
# the environment win, so a deployment can override any of them.
_VNP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VNP_ROOT="$_VNP_ROOT"
export AIRFLOW_HOME="$(mkdir -p "$1" && cd "$1" && pwd)"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$_VNP_ROOT/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
# 32 by default: that many worker processes (~1.4 GB) is too much for a small machine.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-2}"
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="${AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES:-1}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
export AIRFLOW__API__WORKERS="${AIRFLOW__API__WORKERS:-1}"
export AIRFLOW__LOGGING__COLORED_CONSOLE_LOG="${AIRFLOW__LOGGING__COLORED_CONSOLE_LOG:-False}"
# Task processes run from the repository root, so relative paths in params mean the same thing
# to every task and to the user who typed them.
cd "$_VNP_ROOT"
AIRFLOW="${AIRFLOW:-$_VNP_ROOT/.venv/bin/airflow}"
if [ ! -x "$AIRFLOW" ]; then
    AIRFLOW="$(command -v airflow || true)"
fi
if [ -z "$AIRFLOW" ]; then
    echo "error: airflow not found; run 'make install' first" >&2
    exit 2
fi
