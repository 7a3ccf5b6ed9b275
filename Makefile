# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the CPU suite).
# Both create or reuse ./.venv and (re)install the project when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo

.PHONY: install lint browser test gpu-test demo airflow bench bench-compare report-screenshot clean

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

# The real-browser tests (tests/dags/test_ui_browser.py) drive Debian's Chromium through Playwright
# (the dev extra). Installed here when missing and we are root with apt-get (CI); elsewhere they
# skip and say why. Playwright never downloads a browser of its own.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> apt-get install chromium (for the browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# pytest exits with 5 when it collects no tests, so an empty suite fails here too.
test: lint browser
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

# Run the benchmarks again and compare each with its previous saved run (make bench first): one
# table per benchmark (group and name), the saved run above this one; saves this run as well.
bench-compare: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-autosave --benchmark-compare --benchmark-group-by=group,name \
	    --benchmark-columns=min,median,iqr,rounds --benchmark-sort=name

# Regenerate docs/report-screenshot.png from the sample report, in the browser test.
report-screenshot: $(STAMP) browser
	UPDATE_REPORT_SCREENSHOT=1 $(PY) -m pytest tests/dags/test_ui_browser.py -k sample_report -q

clean:
	rm -rf out .pytest_cache .benchmarks
