"""The DuckDB metrics store: schema versioning and idempotent ingestion of every file kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError, InputError
from validation import samples
from validation.metrics_store import SCHEMA_VERSION, MetricsStore, detect_file_type


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_schema_created_and_versioned(tmp_path):
    db = tmp_path / "sub" / "metrics.duckdb"
    store = MetricsStore(db)
    assert db.exists()
    assert store.schema_version() == SCHEMA_VERSION
    # Re-opening (and re-migrating) is harmless and keeps one row per version.
    assert MetricsStore(db).migrate() == SCHEMA_VERSION
    versions = store.query("SELECT version FROM schema_version ORDER BY version")["version"].tolist()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert set(store.row_counts().values()) == {0}


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "m.duckdb"
    store = MetricsStore(db)
    with store.connect() as con:
        con.execute("INSERT INTO schema_version (version, description) VALUES (999, 'future')")
    with pytest.raises(ConfigError, match="newer"):
        MetricsStore(db)


@pytest.mark.parametrize(
    ("builder", "file_type", "table", "expected_rows"),
    [
        (samples.run_record, "run", "stage_metrics", 5),
        (samples.validate_doc, "validate", "equivalence_results", 6),
        (samples.pytest_benchmark_doc, "pytest-benchmark", "benchmark_results", 2),
        (samples.scaling_doc, "scaling", "scaling_results", 3),
        # numeric leaves: tokens_per_s, peak_memory_gib and results[padded|packed].tokens_per_s
        (samples.device_benchmark_doc, "device-benchmark", "device_benchmarks", 4),
    ],
)
def test_ingest_each_kind_twice_adds_nothing(tmp_path, builder, file_type, table, expected_rows):
    store = MetricsStore(tmp_path / "m.duckdb")
    path = _write(tmp_path / "in.json", builder())
    first = store.ingest_file(path)
    assert first.file_type == file_type and not first.skipped
    counts = store.row_counts()
    assert counts["runs"] == 1
    assert counts[table] == expected_rows
    assert first.rows == sum(n for t, n in counts.items() if t != "ingested_files")
    second = store.ingest_file(path)
    assert second.skipped and second.rows == 0
    assert store.row_counts() == counts
    # Same content re-serialised differently (new bytes, same natural keys) adds no rows either.
    path.write_text(json.dumps(json.loads(path.read_text()), indent=3))
    third = store.ingest_file(path)
    assert not third.skipped
    after = store.row_counts()
    assert {k: v for k, v in after.items() if k != "ingested_files"} == {
        k: v for k, v in counts.items() if k != "ingested_files"
    }


def test_run_record_columns(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_file(_write(tmp_path / "r.json", samples.run_record(day=5, esm_tps=1234.5, run_id="R1")))
    run = store.query("SELECT * FROM runs").iloc[0]
    assert run["run_id"] == "R1" and run["kind"] == "predict"
    assert run["device_name"] == "NVIDIA H200" and run["device_count"] == 1
    assert json.loads(run["versions"])["torch"] == "2.11.0+cu130"
    esm = store.query("SELECT * FROM stage_metrics WHERE model = 'esm2_t36_3B_UR50D'").iloc[0]
    assert esm["tokens_per_s"] == 1234.5 and esm["backend"] == "torch-varlen" and esm["precision"] == "fp16"


def test_validate_cosines_stored(tmp_path):
    doc = samples.validate_doc(n=7)
    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_file(_write(tmp_path / "v.json", doc))
    assert store.row_counts()["cosine_values"] == 7 * len(doc["results"])
    got = store.query(
        "SELECT cosine FROM cosine_values WHERE model = ? AND precision = 'bf16' ORDER BY idx",
        [doc["results"][1]["model"]],
    )["cosine"].tolist()
    assert got == pytest.approx(doc["results"][1]["cosines"])


def test_scaling_speedup_derived_when_missing(tmp_path):
    doc = {
        "environment": {"host": "h"},
        "results": [
            {"model": "m", "n_gpus": 1, "tokens_per_s": 100.0},
            {"model": "m", "n_gpus": 2, "tokens_per_s": 190.0},
        ],
    }
    store = MetricsStore(tmp_path / "m.duckdb")
    assert store.ingest_file(_write(tmp_path / "s.json", doc)).file_type == "scaling"
    rows = store.query("SELECT n_gpus, speedup, efficiency FROM scaling_results ORDER BY n_gpus")
    assert rows["speedup"].tolist() == pytest.approx([1.0, 1.9])
    assert rows["efficiency"].tolist() == pytest.approx([1.0, 0.95])


def test_device_benchmark_flattens_numeric_metrics(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_file(_write(tmp_path / "d.json", samples.device_benchmark_doc()))
    got = dict(store.query("SELECT metric, value FROM device_benchmarks").itertuples(index=False))
    assert got["tokens_per_s"] == 90600.0
    assert got["results[padded].tokens_per_s"] == 59500.0
    assert not any(k.startswith("environment") for k in got)


def test_device_benchmark_list_items_keep_distinct_names(tmp_path):
    doc = {
        "environment": {"host": "h"},
        "throughput": [
            {"backend": "sdpa", "precision": "fp16", "tokens_per_s": 1.0},
            {"backend": "sdpa", "precision": "bf16", "tokens_per_s": 2.0},
            {"backend": "sdpa", "precision": "bf16", "tokens_per_s": 3.0},
            {"tokens_per_s": 4.0},
        ],
    }
    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_file(_write(tmp_path / "d.json", doc))
    got = dict(store.query("SELECT metric, value FROM device_benchmarks").itertuples(index=False))
    assert got == {
        "throughput[sdpa/fp16].tokens_per_s": 1.0,
        "throughput[sdpa/bf16].tokens_per_s": 2.0,
        "throughput[sdpa/bf16#2].tokens_per_s": 3.0,
        "throughput[3].tokens_per_s": 4.0,
    }


def _esm2_device_doc(day: int, p001_key: str, p001: float) -> dict:
    """The shape of benchmarks/gpu/esm2_device.py's JSON, with the 0.1th percentile under ``p001_key``."""
    env = {"host": "h", "time": f"2026-11-{day:02d}T00:00:00+00:00", "device_name": "NVIDIA H200"}
    return {
        "schema": "virnucpro.bench.esm2/1",
        "environment": env,
        "equivalence": {"fp16": {"n": 2000, "cos_min": p001 - 1e-6, p001_key: p001, "backend": "sdpa"}},
    }


def test_old_and_new_cosine_percentile_keys_are_one_series(tmp_path):
    # GPU-script files committed before validation.metrics wrote the 0.1th percentile as cos_p0.1.
    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_file(_write(tmp_path / "old.json", _esm2_device_doc(18, "cos_p0.1", 0.99991)))
    store.ingest_file(_write(tmp_path / "new.json", _esm2_device_doc(19, "cos_p001", 0.99993)))
    series = store.query(
        "SELECT r.started_at, d.value FROM device_benchmarks d JOIN runs r USING (run_id) "
        "WHERE d.benchmark = 'virnucpro.bench.esm2/1' AND d.metric = 'equivalence.fp16.cos_p001' "
        "ORDER BY r.started_at"
    )
    assert series["value"].tolist() == [0.99991, 0.99993]
    assert store.query("SELECT metric FROM device_benchmarks WHERE metric LIKE '%p0.1%'").empty


def test_migration_renames_old_cosine_percentile_rows(tmp_path):
    db = tmp_path / "m.duckdb"
    store = MetricsStore(db)
    with store.connect() as con:  # a version-1 database holding an old-key row
        con.execute("DELETE FROM schema_version WHERE version > 1")  # as before migration 2
        con.execute(
            "INSERT INTO device_benchmarks VALUES ('r1', 'b', 'equivalence.bf16.cos_p0.1', 0.9991), "
            "('r1', 'b', 'goals.bf16_cos_min>=0.999', 1.0), ('r1', 'b', 'spot_check.min_cosine', 0.9), "
            "('r1', 'b', 'spot_check.max_abs_diff', 0.5), ('r1', 'b', 'spot_check.rows_checked', 256)"
        )
    assert MetricsStore(db).schema_version() == SCHEMA_VERSION
    got = dict(store.query("SELECT metric, value FROM device_benchmarks").itertuples(index=False))
    assert got == {
        "equivalence.bf16.cos_p001": 0.9991,
        "goals.bf16_cos_min>=0.999": 1.0,
        "spot_check.cos_min": 0.9,
        "spot_check.max_abs": 0.5,
        "spot_check.n": 256.0,
    }


def test_committed_gpu_results_use_the_current_keys_after_ingest(tmp_path):
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_files(sorted(results.glob("*device*.json")))
    metrics = store.query("SELECT DISTINCT metric FROM device_benchmarks")["metric"].tolist()
    assert any(m.endswith(".cos_p001") for m in metrics)
    assert any(m.startswith("spot_check_vs_direct_forward.cos_min") for m in metrics)
    assert not any(old in m for m in metrics for old in ("cos_p0.1", "min_cosine", "max_abs_diff"))


@pytest.mark.parametrize("doc", [[1, 2], {"hello": 1}])
def test_unknown_files_rejected(tmp_path, doc):
    with pytest.raises(InputError):
        detect_file_type(doc)
    store = MetricsStore(tmp_path / "m.duckdb")
    with pytest.raises(InputError):
        store.ingest_file(_write(tmp_path / "x.json", doc))


def test_not_json_and_missing_rejected(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        store.ingest_file(bad)
    with pytest.raises(InputError, match="cannot read"):
        store.ingest_file(tmp_path / "missing.json")
    assert store.row_counts()["ingested_files"] == 0
