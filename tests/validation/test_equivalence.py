"""Equivalence metrics on hand-made vectors, and the synthetic frames the harness feeds the models."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, ThresholdFailed
from pipeline.prepare.translate import six_frames
from validation.equivalence import (
    EquivalenceConfig,
    Thresholds,
    enforce,
    flip_max_margin,
    format_table,
    label_agreement,
    passes,
    synthetic_frames,
)


def test_label_agreement_frames_and_chunks():
    ids = ["r_chunk_1F1", "r_chunk_1R2", "r_chunk_2F1", "r_chunk_2F2"]
    base = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    same = label_agreement(ids, base, base)
    assert same == (1.0, 1.0)
    # flip frame 1 of chunk 1 to virus: 3 of 4 frames agree; chunk 1's consensus flips, chunk 2's does not
    cand = base.copy()
    cand[1] = [0.4, 0.95]
    frame, chunk = label_agreement(ids, cand, base)
    assert frame == pytest.approx(0.75) and chunk == pytest.approx(0.5)


def test_flip_max_margin_is_the_baselines_margin_of_the_farthest_flip():
    base = np.array([[0.9, 0.1], [0.52, 0.48], [0.3, 0.7], [0.45, 0.55]])
    assert flip_max_margin(base, base) == 0.0
    near = base.copy()
    near[1], near[3] = [0.49, 0.51], [0.56, 0.44]  # the two frames within 0.05 of the boundary flip
    assert flip_max_margin(near, base) == pytest.approx(0.05)
    far = near.copy()
    far[0] = [0.2, 0.8]  # a frame the baseline called with P(virus) = 0.1 flips too
    assert flip_max_margin(far, base) == pytest.approx(0.4)


def test_thresholds_validated():
    with pytest.raises(ConfigError, match="cannot exceed 1"):
        Thresholds(min_cosine=1.1)
    with pytest.raises(ConfigError):
        Thresholds(min_label_agreement=2.0)
    with pytest.raises(ConfigError):
        EquivalenceConfig(precisions=("fp4",))
    with pytest.raises(ConfigError):
        EquivalenceConfig(n=0)


def test_passes_and_enforce():
    row = {
        "model": "m",
        "comparison": "precision",
        "precision": "bf16",
        "backend": "sdpa",
        "cos_min": 0.9995,
        "label_agreement": 1.0,
        "chunk_label_agreement": 1.0,
        "rel_l2_max": 0.02,
    }
    assert passes(row, Thresholds())
    assert not passes(row, Thresholds(min_cosine=0.9999))
    assert not passes(row, Thresholds(max_rel_l2=0.01))
    assert not passes(row | {"chunk_label_agreement": 0.99}, Thresholds())
    # a random classifier's label flips are reported, not enforced; cosine still is
    assert passes(
        row | {"label_agreement": 0.5, "chunk_label_agreement": 0.5}, Thresholds(), enforce_labels=False
    )
    assert not passes(row, Thresholds(min_cosine=0.9999), enforce_labels=False)
    enforce([row | {"passed": True}], Thresholds())
    with pytest.raises(ThresholdFailed, match="1 of 1"):
        enforce([row | {"passed": False}], Thresholds())


def test_table_shows_how_many_labels_flipped():
    row = {
        "model": "random:esm2_t36_3B_UR50D",
        "comparison": "precision",
        "precision": "fp8",
        "backend": "torch-varlen",
        "n": 2048,
        "cos_min": 0.9996,
        "cos_p001": 0.9996,
        "cos_mean": 0.9997,
        "rel_l2_max": 0.03,
        "max_abs": 0.1,
        "label_agreement": 1.0,
        "chunk_label_agreement": 852 / 855,
        "label_flips": 0,
        "chunk_label_flips": 3,
        "passed": False,
    }
    line = format_table([row]).splitlines()[1]
    assert "1.0000  " in line and "0.9965 (3)" in line and "(0)" not in line


def test_synthetic_frames_are_real_prepare_frames():
    frames = synthetic_frames(40, chunk_size=300, seed=3)
    assert len(frames.ids) == 40 == len(set(frames.ids))
    assert frames == synthetic_frames(40, chunk_size=300, seed=3)  # seeded
    assert frames != synthetic_frames(40, chunk_size=300, seed=4)
    for fid, nt, prot in zip(frames.ids, frames.nucleotide, frames.protein, strict=True):
        assert "_chunk_" in fid and fid[-2:] in {"F1", "F2", "F3", "R1", "R2", "R3"}
        assert set(nt) <= set("ACGT") and "*" not in prot and len(prot) >= 5
        # the frame is one that six_frames keeps for this nucleotide window read forward
        if fid.endswith("F1"):
            assert six_frames(nt)[0].protein == prot
    # several frames per chunk, so chunk consensus is exercised
    chunks = [i[:-2] for i in frames.ids]
    assert len(set(chunks)) < len(chunks)


def test_fp8_rows_have_their_own_thresholds():
    from validation.equivalence import FP8_THRESHOLDS

    row = {
        "cos_min": 0.997,
        "cos_mean": 0.9996,
        "label_agreement": 1.0,
        "chunk_label_agreement": 0.9995,
        "rel_l2_max": 0.05,
    }
    assert not passes(row, Thresholds())  # a bf16 row this far off fails
    assert passes(row, FP8_THRESHOLDS)
    assert not passes(row | {"cos_mean": 0.9985}, FP8_THRESHOLDS)  # the mean is enforced too
    assert not passes(row | {"cos_min": 0.994}, FP8_THRESHOLDS)
    assert not passes(row | {"chunk_label_agreement": 0.998}, FP8_THRESHOLDS)
    assert EquivalenceConfig(precisions=("bf16", "fp8")).fp8_thresholds == FP8_THRESHOLDS
    with pytest.raises(ConfigError, match="min_mean_cosine"):
        Thresholds(min_mean_cosine=1.5)


@pytest.mark.gpu
def test_nightly_equivalence_step_on_a_gpu_has_fp8_rows(tmp_path, monkeypatch):
    """The nightly DAG's equivalence task on a GPU with FP8 tensor cores: fp16, bf16 and fp8 rows for
    ESM-2, the fp8 rows judged by the fp8 thresholds, and the document written for the report."""
    import json
    from pathlib import Path

    from pipeline.models.fp8 import fp8_unavailable_reason
    from validation.equivalence import FP8_THRESHOLDS
    from validation.steps import equivalence_step

    reason = fp8_unavailable_reason("cuda")
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("VIRNUCPRO_INPUT_ROOT", str(tmp_path))
    fasta = tmp_path / "in.fa"
    fasta.write_text(">r\n" + "ATGGCTAAAGGTCTGTTCGAACGT" * 10 + "\n")
    params = {"input_path": str(fasta), "demo": True, "gpu_slots": 1, "validation_sequences": 64}
    doc = json.loads(Path(equivalence_step(params, tmp_path / "run", run_id="gpu-fp8")).read_text())
    esm_rows = [r for r in doc["results"] if r["kind"] == "esm2" and r["comparison"] != "packing"]
    assert {r["precision"] for r in esm_rows} == {"fp16", "bf16", "fp8"}
    assert doc["thresholds"]["fp8"]["min_mean_cosine"] == FP8_THRESHOLDS.min_mean_cosine
    for row in esm_rows:
        assert row["n"] == 64 and row["passed"], row
        if row["precision"] == "fp8":
            assert (
                row["cos_mean"] >= FP8_THRESHOLDS.min_mean_cosine
                and row["cos_min"] >= FP8_THRESHOLDS.min_cosine
            )
    assert doc["passed"] and doc["run_id"] == "gpu-fp8"
