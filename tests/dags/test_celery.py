"""The production DAG on CeleryExecutor with a real broker on loopback and two workers: one for
the default queue, one for the "gpu" queue that the embed tasks ask for."""

from __future__ import annotations

import random

import pytest
from fixtures.airflow import demo_conf, reachable, write_tiny_fasta


def _broker() -> tuple[str, str | None] | None:
    """(broker URL, result backend URL or None = Airflow's default, the metadata DB) of a broker
    running on loopback, or None."""
    if reachable("127.0.0.1", 6379):
        db = random.randint(1, 15)  # a DB of its own: queue names are shared within one Redis DB
        url = f"redis://127.0.0.1:6379/{db}"
        return url, url
    if reachable("127.0.0.1", 5672):
        return "amqp://guest:guest@127.0.0.1:5672//", None
    return None


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_celery_workers_run_the_predict_dag(tmp_path, serve_factory):  # noqa: F811
    pytest.importorskip("airflow.providers.celery", reason="needs apache-airflow-providers-celery")
    broker = _broker()
    if broker is None:
        pytest.skip("no Celery broker on 127.0.0.1 (Redis :6379 or RabbitMQ :5672)")
    broker_url, backend = broker
    fasta = write_tiny_fasta(tmp_path / "tiny.fa")
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "CELERY_WORKER_QUEUES": "default gpu",
    }
    if backend:
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = backend
    server = serve_factory(tmp_path / "home", env=env)
    server.login()
    server.wait_for_dag("virnucpro_predict")
    run_dir = tmp_path / "run"
    tis = server.run_to_success(
        "virnucpro_predict", demo_conf(fasta, run_dir, tmp_path / "metrics.duckdb"), timeout=360
    )
    assert tis["embed"]["queue"] == "gpu" and tis["prepare"]["queue"] == "default"
    # Each worker only consumed its own queue.
    logs = tmp_path / "home" / "logs" / "services"
    gpu_log = (logs / "celery-gpu.log").read_text()
    default_log = (logs / "celery-default.log").read_text()
    assert "task_id='embed'" in gpu_log and "task_id='embed'" not in default_log
    assert "task_id='prepare'" in default_log and "task_id='prepare'" not in gpu_log
    assert (run_dir / "prediction_results_highestscore.csv").is_file()
