"""benchmarks/gpu/e2e_device.py: the seeded read set, and its JSON landing in the metrics store."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("e2e_device", ROOT / "benchmarks" / "gpu" / "e2e_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stop_free_in_frame_1(seq: str) -> bool:
    return all(seq[i : i + 3] not in {"TAA", "TAG", "TGA"} for i in range(0, len(seq) - 2, 3))


def test_reads_are_seeded_and_three_quarters_code_in_frame_1() -> None:
    e2e = _script()
    reads = e2e.make_reads(2000, 150, seed=7)
    assert reads == e2e.make_reads(2000, 150, seed=7)
    assert reads != e2e.make_reads(2000, 150, seed=8)
    assert all(len(s) == 150 and set(s) <= set("ACGT") for _, s in reads)
    coding = sum(_stop_free_in_frame_1(s) for _, s in reads) / len(reads)
    # 75 % by construction, plus the random reads whose frame 1 happens to be stop-free (~9.5 %)
    assert 0.75 + 0.25 * 0.05 < coding < 0.75 + 0.25 * 0.15


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_writes_json_the_metrics_store_ingests(tmp_path) -> None:
    from validation.metrics_store import MetricsStore

    e2e = _script()
    out = tmp_path / "e2e.json"
    assert e2e.main(["--smoke", "--reads", "12", "--caches", "cold", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert run["exit_code"] == 0 and run["labels"]["frames"] == doc["input"]["frames"] > 0
    assert set(run["stages"]) == {"prepare", "shard", "workers", "classify", "merge"}
    assert set(run["models"]) == {"dnabert-s", "esm2"} and run["models"]["esm2"]["tokens"] > 0
    store = MetricsStore(tmp_path / "m.duckdb")
    result = store.ingest_file(out)
    assert result.file_type == "device-benchmark"
    metrics = set(
        store.query("SELECT metric FROM device_benchmarks WHERE benchmark = 'e2e_device'")["metric"]
    )
    assert any(m.startswith("runs[") and m.endswith("].wall_s") for m in metrics)
    assert any(m.endswith(".models.esm2.tokens_per_s") for m in metrics)
