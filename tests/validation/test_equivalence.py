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
