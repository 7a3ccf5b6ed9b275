"""Airflow fixtures for the DAG tests (the Airflow environment is set before airflow is imported)."""

import pytest
from fixtures.airflow import airflow_db, serve_factory  # noqa: F401


@pytest.fixture(autouse=True)
def _paths_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read and write temporary directories: open the DAG path roots to the whole tree
    (tests/reliability/test_dag_params.py checks the roots themselves)."""
    for name in ("VIRNUCPRO_INPUT_ROOT", "VIRNUCPRO_OUTPUT_ROOT", "VIRNUCPRO_METRICS_ROOT"):
        monkeypatch.setenv(name, "/")
