# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the CPU suite).
# Both create or reuse ./.venv and (re)install the project when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo

.PHONY: install test demo airflow bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# pytest exits with 5 when it collects no tests, so an empty suite fails here too.
test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(VENV)/bin/virnucpro prepare examples/demo.fa -o $(DEMO_OUT)

bench: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-autosave

clean:
	rm -rf out .pytest_cache .benchmarks
