"""A real local Airflow (scripts/airflow_serve.sh): loopback-only listeners, the gpu pool, and a
production run triggered and finished through the REST API."""

from __future__ import annotations

import pytest
from fixtures.airflow import demo_conf, write_tiny_fasta


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rest_api_triggers_a_predict_run(tmp_path, serve_factory):  # noqa: F811
    fasta = write_tiny_fasta(tmp_path / "tiny.fa")
    server = serve_factory(tmp_path / "home")

    listeners = server.listeners()
    assert ("127.0.0.1", server.port) in listeners
    assert all(addr == "127.0.0.1" for addr, _ in listeners), listeners  # nothing on 0.0.0.0 / ::

    server.login()
    server.wait_for_dag("virnucpro_predict")
    pools = {p["name"]: p["slots"] for p in server.request("GET", "/api/v2/pools")["pools"]}
    assert pools.get("gpu") == 1

    # The API validates conf against the DAG's Param schema before creating a run.
    with pytest.raises(AssertionError, match="400"):
        server.request(
            "POST",
            "/api/v2/dags/virnucpro_predict/dagRuns",
            {"logical_date": None, "conf": {"input_path": str(fasta), "precision": "fp4"}},
        )

    run_dir = tmp_path / "run"
    tis = server.run_to_success(
        "virnucpro_predict", demo_conf(fasta, run_dir, tmp_path / "metrics.duckdb"), timeout=300
    )
    assert tis["embed"]["pool"] == "gpu" and tis["embed"]["queue"] == "gpu"
    assert all(ti["state"] == "success" for ti in tis.values()), tis
    lines = (run_dir / "prediction_results.txt").read_text().splitlines()
    assert lines[0].split("\t")[:2] == ["Sequence_ID", "Prediction"] and len(lines) > 1
    assert (run_dir / "run_record.json").is_file()
