# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the CPU suite).
# Both create or reuse ./.venv and (re)install the project when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo

.PHONY: install lint test gpu-test demo airflow bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Formatting, lint and the import layers (pyproject.toml [tool.ruff], [tool.importlinter]).
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# pytest exits with 5 when it collects no tests, so an empty suite fails here too.
test: lint
	$(PY) -m pytest tests

# Every test marked "gpu" on a CUDA machine, with a JSON summary (docs/testing.md). Uses the python on
# PATH and this checkout (no install step: GPU images bring their own torch).
GPU_TEST_OUT ?= benchmarks/results/gpu_tests.json
gpu-test:
	scripts/gpu_tests.sh $(GPU_TEST_OUT)

# The nightly DAG run in-process (`airflow dags test`) on a fresh SQLite AIRFLOW_HOME, offline demo
# models; prints the path of the HTML report. DEMO_SKIP_BENCHMARKS=1 leaves the benchmarks out.
demo: $(STAMP)
	AIRFLOW=$(abspath $(VENV))/bin/airflow scripts/airflow_demo.sh $(DEMO_OUT)

# Local Airflow on 127.0.0.1 only (api-server, scheduler, dag-processor, triggerer) with the "gpu"
# pool; AIRFLOW_PORT (8080), GPU_SLOTS and AIRFLOW_HOME_DIR (out/airflow_home) can be set.
airflow: $(STAMP)
	AIRFLOW=$(abspath $(VENV))/bin/airflow scripts/airflow_serve.sh

bench: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-autosave

clean:
	rm -rf out .pytest_cache .benchmarks
