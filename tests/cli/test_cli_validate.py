"""``virnucpro validate``: exit codes and the JSON it writes (tiny random models on CPU)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.core.errors import ConfigError, ThresholdFailed

REQUIRED = {
    "model",
    "precision",
    "backend",
    "n",
    "cos_min",
    "cos_p001",
    "cos_mean",
    "rel_l2_max",
    "max_abs",
    "label_agreement",
    "chunk_label_agreement",
    "passed",
}


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_impossible_threshold_is_a_config_error(tmp_path):
    out = tmp_path / "v.json"
    assert _run(["validate", "--n", "2", "--json", str(out), "--min-cosine", "1.1"]) == ConfigError.exit_code
    assert not out.exists()
    assert _run(["validate", "--n", "2", "--json", str(out), "--precision", "fp64"]) == ConfigError.exit_code


def test_fp32_passes_with_default_thresholds_and_ingests(tmp_path):
    out = tmp_path / "v.json"
    db = tmp_path / "m.duckdb"
    assert (
        _run(
            [
                "validate",
                "--n",
                "6",
                "--precision",
                "fp32",
                "--device",
                "cpu",
                "--json",
                str(out),
                "--db",
                str(db),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["schema"] == "virnucpro.validate/1" and doc["passed"] is True
    kinds = {(r["kind"], r["comparison"]) for r in doc["results"]}
    assert kinds == {("esm2", "packing"), ("dnabert-s", "packing"), ("dnabert-s+esm2", "end-to-end")}
    for row in doc["results"]:
        assert REQUIRED <= set(row)
        assert row["n"] == 6 and len(row["cosines"]) == 6
        assert row["cos_min"] > 0.99999 and row["label_agreement"] == 1.0
    from validation.metrics_store import MetricsStore

    assert MetricsStore(db).row_counts()["equivalence_results"] == len(doc["results"])


def test_bf16_fails_an_absurdly_strict_threshold(tmp_path):
    out = tmp_path / "v.json"
    code = _run(
        [
            "validate",
            "--n",
            "4",
            "--precision",
            "bf16",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--min-cosine",
            "0.9999999999",
        ]
    )
    assert code == ThresholdFailed.exit_code
    doc = json.loads(out.read_text())  # results are written before the exit
    assert doc["passed"] is False
    failed = {(r["kind"], r["comparison"], r["precision"]) for r in doc["results"] if not r["passed"]}
    assert ("esm2", "precision", "bf16") in failed and ("dnabert-s", "end-to-end", "bf16") in failed
    # fp32 packing rows are exact to ~1e-7 relative, so they still pass
    assert all(
        r["passed"] for r in doc["results"] if r["precision"] == "fp32" and r["kind"] != "dnabert-s+esm2"
    )


def test_defaults_pass_on_cpu_with_random_classifier_labels_informational(tmp_path):
    out = tmp_path / "v.json"
    assert _run(["validate", "--device", "cpu", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["results"]
    assert all(r["label_enforced"] is False for r in doc["results"])
    for row in doc["results"]:  # a flip's margin exists exactly when a frame flipped
        assert (row["flip_max_margin"] > 0) == (row["label_flips"] > 0), row
        assert 0.0 <= row["flip_max_margin"] < 0.5


def test_a_classifier_file_makes_label_agreement_enforced(tmp_path):
    from pipeline.classify.mlp import random_classifier, save_classifier

    # tiny models: DNABERT-S tiny (64) + ESM-2 8M (320)
    clf = save_classifier(random_classifier(64 + 320, seed=3), tmp_path / "clf.safetensors")
    out = tmp_path / "v.json"
    assert (
        _run(
            [
                "validate",
                "--n",
                "4",
                "--precision",
                "fp32",
                "--device",
                "cpu",
                "--classifier",
                str(clf),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["label_enforced"] is True and r["label_agreement"] == 1.0 for r in rows)
