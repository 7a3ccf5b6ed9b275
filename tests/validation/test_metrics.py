"""The one cosine-statistics definition, on hand-made vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.errors import ConfigError
from validation.metrics import STAT_KEYS, cosine_stats, per_sequence_cosine, relative_l2


def test_identical_embeddings_are_perfect():
    a = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    m = cosine_stats(a, a.copy())
    assert tuple(m) == STAT_KEYS
    assert m["n"] == 2 and m["nonfinite"] == 0
    assert m["cos_min"] == pytest.approx(1.0) and m["cos_mean"] == pytest.approx(1.0)
    assert m["rel_l2_max"] == 0.0 and m["rel_l2_mean"] == 0.0 and m["max_abs"] == 0.0


def test_known_angles_and_errors():
    base = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    cand = np.array([[1.0, 1.0], [0.0, 2.0], [3.0, 4.5]])
    cos = per_sequence_cosine(cand, base)
    # row 0: 45 degrees; row 1: identical; row 2: |d| = 0.5, |b| = 5
    assert cos[0] == pytest.approx(np.sqrt(0.5))
    assert cos[1] == pytest.approx(1.0)
    assert cos[2] == pytest.approx((9 + 18) / (5 * np.hypot(3, 4.5)))
    assert relative_l2(cand, base).tolist() == pytest.approx([1.0, 0.0, 0.1])
    m = cosine_stats(cand, base)
    assert m["cos_min"] == pytest.approx(np.sqrt(0.5))
    assert m["cos_mean"] == pytest.approx(cos.mean())
    assert m["rel_l2_max"] == pytest.approx(1.0) and m["rel_l2_mean"] == pytest.approx(1.1 / 3)
    assert m["max_abs"] == pytest.approx(1.0)
    # the 0.1th percentile, linear interpolation: 0.2 % of the way from the lowest to the next value
    low, nxt = np.sort(cos)[:2]
    assert m["cos_p001"] == pytest.approx(low + 0.002 * (nxt - low))


def test_opposite_and_zero_vectors():
    cand, base = (
        np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]),
    )
    assert per_sequence_cosine(cand, base).tolist() == pytest.approx([-1.0, 1.0, 0.0])
    assert relative_l2(cand, base).tolist() == pytest.approx([2.0, 0.0, 1.0])
    assert relative_l2(base, cand)[2] == np.inf  # a difference from a zero baseline row


def test_nonfinite_rows_are_counted_and_fail_the_statistics():
    base = np.ones((3, 4))
    cand = base.copy()
    cand[1, 2] = np.nan
    m = cosine_stats(cand, base)
    assert m["nonfinite"] == 1
    assert np.isnan(m["cos_min"]) and not m["cos_min"] >= 0.999  # never passes a threshold
    assert np.isnan(per_sequence_cosine(cand, base)[1])


def test_torch_tensors_give_the_numpy_answer():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    assert cosine_stats(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        cosine_stats(a.astype(np.float32), b.astype(np.float32))
    )
    want = torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=-1)
    assert per_sequence_cosine(a, b) == pytest.approx(want.numpy())


@pytest.mark.parametrize("shapes", [((2, 3), (3, 3)), ((3,), (3,)), ((0, 3), (0, 3))])
def test_bad_shapes_refused(shapes):
    with pytest.raises(ConfigError):
        cosine_stats(np.zeros(shapes[0]), np.zeros(shapes[1]))
