"""Scoring frames: join-by-id of the two embedding sets, DNA-then-protein concatenation, failures."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures.prepared import seal_prepared

from pipeline.classify.mlp import MLPClassifier
from pipeline.classify.scoring import classify, frame_ids, score_frames
from pipeline.core.errors import OutputIntegrityError

D_DNA, D_PROT = 2, 3
EPS = 1e-5


def _probe_classifier() -> MLPClassifier:
    """Hand-set weights: P(virus) = sigmoid(dna[0] / sqrt(1 + eps)); every other input is ignored.

    hidden0 = dna0, hidden1 = -dna0; BatchNorm (eval, mean 0, var 1) divides by sqrt(1 + eps);
    logit_virus = relu(hidden0), logit_others = relu(hidden1).
    """
    model = MLPClassifier(D_DNA + D_PROT, hidden_dim=2)
    with torch.no_grad():
        model.hidden_layer.weight.zero_()
        model.hidden_layer.bias.zero_()
        model.hidden_layer.weight[0, 0] = 1.0
        model.hidden_layer.weight[1, 0] = -1.0
        model.bn1.running_mean.zero_()
        model.bn1.running_var.fill_(1.0)
        model.bn1.weight.fill_(1.0)
        model.bn1.bias.zero_()
        model.output_layer.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        model.output_layer.bias.zero_()
    return model.eval()


def _expected_virus(dna0: float) -> float:
    return 1.0 / (1.0 + math.exp(-dna0 / math.sqrt(1.0 + EPS)))


FRAMES = ["a_chunk_1F1", "a_chunk_1R2", "b_chunk_1F3", "b_chunk_2R1"]
DNA0 = {"a_chunk_1F1": 2.0, "a_chunk_1R2": -1.0, "b_chunk_1F3": 0.5, "b_chunk_2R1": -3.0}


def _sets(order_dna, order_prot):
    dna = np.array([[DNA0[i], 9.0] for i in order_dna], np.float32)
    # protein vectors carry large values in their first column: if protein came first in the
    # concatenation, P(virus) would follow these instead
    prot = np.array([[-50.0 if DNA0[i] > 0 else 50.0, 1.0, 1.0] for i in order_prot], np.float32)
    return list(order_dna), dna, list(order_prot), prot


def test_scores_follow_dna_by_id_in_frame_order() -> None:
    ids_d, dna, ids_p, prot = _sets(FRAMES[::-1], [FRAMES[i] for i in (2, 0, 3, 1)])
    scores = score_frames(FRAMES, ids_d, dna, ids_p, prot, _probe_classifier())
    assert scores.dtype == np.float32 and scores.shape == (4, 2)
    expected = np.array([_expected_virus(DNA0[f]) for f in FRAMES])
    np.testing.assert_allclose(scores[:, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(scores[:, 0], 1 - expected, rtol=1e-5, atol=1e-7)


def test_shuffled_sets_give_the_same_scores() -> None:
    model = _probe_classifier()
    a = score_frames(FRAMES, *_sets(FRAMES, FRAMES), model)
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(FRAMES))
    b = score_frames(FRAMES, *_sets(shuffled, FRAMES[::-1]), model)
    np.testing.assert_array_equal(a, b)


def test_missing_id_fails() -> None:
    ids_d, dna, ids_p, prot = _sets(FRAMES[:3], FRAMES)
    with pytest.raises(OutputIntegrityError, match="no DNABERT-S embedding"):
        score_frames(FRAMES, ids_d, dna, ids_p, prot, _probe_classifier())


def test_duplicate_id_fails() -> None:
    dup = FRAMES + [FRAMES[1]]
    ids_d, dna, ids_p, prot = _sets(FRAMES, dup)
    with pytest.raises(OutputIntegrityError, match="duplicate"):
        score_frames(FRAMES, ids_d, dna, ids_p, prot, _probe_classifier())


def test_extra_id_fails() -> None:
    ids_d, dna, ids_p, prot = _sets(FRAMES, FRAMES)
    ids_p = ids_p[:-1] + ["stranger_chunk_1F1"]
    with pytest.raises(OutputIntegrityError):
        score_frames(FRAMES, ids_d, dna, ids_p, prot, _probe_classifier())
    ids_d, dna, ids_p, prot = _sets(FRAMES, FRAMES[:3])  # DNA holds one frame too many
    with pytest.raises(OutputIntegrityError, match="not frames of this input"):
        score_frames(FRAMES[:3], ids_d, dna, ids_p, prot, _probe_classifier())


def test_width_mismatch_fails() -> None:
    ids_d, dna, ids_p, prot = _sets(FRAMES, FRAMES)
    with pytest.raises(OutputIntegrityError, match="wide"):
        score_frames(FRAMES, ids_d, dna, ids_p, prot[:, :2], _probe_classifier())


def _write_set(directory, ids, vectors, kind):
    from pipeline.embed.parts import FORMAT, write_metadata, write_part

    directory.mkdir(parents=True)
    write_part(directory, 0, ids, vectors, "fp")
    write_metadata(
        directory,
        {
            "format": FORMAT,
            "complete": True,
            "n_parts": 1,
            "n_rows": len(ids),
            "hidden_size": vectors.shape[1],
            "kind": kind,
            "model": "test",
            "repr_layer": 0,
            "precision": "fp32",
            "dtype": "float32",
            "fingerprint": "fp",
        },
    )


def test_classify_writes_parquet_in_protein_order(tmp_path) -> None:
    prepared = tmp_path / "run"
    prepared.mkdir()
    (prepared / "protein.faa").write_text("".join(f">{f}\nMK\n" for f in FRAMES))
    seal_prepared(prepared, FRAMES)
    ids_d, dna, ids_p, prot = _sets(FRAMES[::-1], FRAMES)
    # DNA split over two shard directories, in an order unrelated to protein.faa
    _write_set(tmp_path / "emb/dnabert-s/shard-001", ids_d[:2], dna[:2], "dnabert-s")
    _write_set(tmp_path / "emb/dnabert-s/shard-000", ids_d[2:], dna[2:], "dnabert-s")
    _write_set(tmp_path / "emb/esm2/shard-000", ids_p, prot, "esm2")
    assert frame_ids(prepared) == FRAMES
    out = classify(
        prepared,
        [tmp_path / "emb/dnabert-s/shard-001", tmp_path / "emb/dnabert-s/shard-000"],
        [tmp_path / "emb/esm2/shard-000"],
        _probe_classifier(),
        tmp_path / "frame_scores.parquet",
    )
    table = pq.read_table(out)
    assert table.column_names == ["id", "score_others", "score_virus"]
    assert table.column("id").to_pylist() == FRAMES
    assert str(table.schema.field("score_virus").type) == "float"
    np.testing.assert_allclose(
        table.column("score_virus").to_numpy(), [_expected_virus(DNA0[f]) for f in FRAMES], rtol=1e-6
    )


def test_classify_with_a_random_spec_and_no_frames(tmp_path) -> None:
    prepared = tmp_path / "run"
    seal_prepared(prepared)
    out = classify(prepared, [], [], "random", tmp_path / "s.parquet")
    assert pq.read_table(out).num_rows == 0
