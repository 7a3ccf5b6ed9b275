"""Airflow fixtures for the DAG tests (the Airflow environment is set before airflow is imported)."""

from fixtures.airflow import airflow_db, serve_factory  # noqa: F401
