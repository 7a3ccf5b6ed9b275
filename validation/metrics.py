"""Per-sequence agreement of two embedding matrices: the one definition of the cosine statistics.

`validation.equivalence` (``virnucpro validate``), the GPU scripts (``benchmarks/gpu/*_device.py``)
and the metrics store all use these functions and these key names (`STAT_KEYS`), so one metric has
one name in every JSON file and DuckDB table.

Rows are sequences: ``candidate`` and ``baseline`` are ``(N, D)`` arrays of pooled embeddings (numpy
or torch tensors on any device), row ``i`` of one compared with row ``i`` of the other. Everything is
computed in float64 numpy.
A row holding a NaN or an infinity in either input has cosine NaN and is counted in ``nonfinite``;
the statistics then come out NaN, which fails every threshold instead of hiding the row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.core.errors import ConfigError

#: Keys of `cosine_stats`, in order.
STAT_KEYS = ("n", "cos_min", "cos_p001", "cos_mean", "rel_l2_max", "rel_l2_mean", "max_abs", "nonfinite")
#: Names older result files used for a key of `STAT_KEYS` (GPU-script JSON written before the one
#: definition); the metrics store reads them under the new name.
LEGACY_KEYS = {
    "cos_p0.1": "cos_p001",
    "min_cosine": "cos_min",
    "max_abs_diff": "max_abs",
    "rows_checked": "n",
}


def _pair(candidate: ArrayLike, baseline: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _float64(candidate), _float64(baseline)
    if a.shape != b.shape or a.ndim != 2:
        raise ConfigError(
            f"embedding shapes differ or are not 2-D: {a.shape} vs {b.shape}; "
            "compare (N, D) arrays with the same rows"
        )
    if a.shape[0] == 0:
        raise ConfigError("no sequences to compare (0 rows); give at least one embedding row")
    return a, b


def _float64(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU (the GPU scripts pass these)
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def per_sequence_cosine(candidate: ArrayLike, baseline: ArrayLike) -> np.ndarray:
    """Cosine similarity of each row pair: ``(N, D), (N, D) -> (N,) float64`` in [-1, 1].

    Two zero rows are identical (1.0); a zero row against a non-zero one shares nothing (0.0);
    a row with a non-finite value gives NaN.
    """
    a, b = _pair(candidate, baseline)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = na * nb
    dot = np.einsum("nd,nd->n", a, b)
    cos = np.where(
        denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where((na == 0) & (nb == 0), 1.0, 0.0)
    )
    cos = np.clip(cos, -1.0, 1.0)
    return np.where(_finite_rows(a, b), cos, np.nan)


def relative_l2(candidate: ArrayLike, baseline: ArrayLike) -> np.ndarray:
    """``|a - b| / |b|`` per row: ``(N, D), (N, D) -> (N,) float64`` (0 for two zero rows, inf
    for a difference from a zero baseline row, NaN for a row with a non-finite value)."""
    a, b = _pair(candidate, baseline)
    nb = np.linalg.norm(b, axis=1)
    diff = np.linalg.norm(a - b, axis=1)
    rel = np.where(nb > 0, diff / np.where(nb > 0, nb, 1.0), np.where(diff > 0, np.inf, 0.0))
    return np.where(_finite_rows(a, b), rel, np.nan)


def _finite_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)


def cosine_stats(candidate: ArrayLike, baseline: ArrayLike) -> dict[str, Any]:
    """Summary of two ``(N, D)`` embedding matrices, keyed by `STAT_KEYS`.

    ``n`` rows; ``cos_min``, ``cos_p001`` (0.1th percentile, linear interpolation) and ``cos_mean``
    of `per_sequence_cosine`; ``rel_l2_max`` and ``rel_l2_mean`` of `relative_l2`; ``max_abs``, the
    largest element difference; ``nonfinite``, rows with a NaN or infinity in either input.

    Raises:
        ConfigError: the shapes differ, are not 2-D, or have no rows.
    """
    a, b = _pair(candidate, baseline)
    cos = per_sequence_cosine(a, b)
    rel = relative_l2(a, b)
    return {
        "n": int(cos.size),
        "cos_min": float(cos.min()),
        "cos_p001": float(np.quantile(cos, 0.001)),
        "cos_mean": float(cos.mean()),
        "rel_l2_max": float(rel.max()),
        "rel_l2_mean": float(rel.mean()),
        "max_abs": float(np.abs(a - b).max()),
        "nonfinite": int((~_finite_rows(a, b)).sum()),
    }
