"""Packing variable-length token rows into one flat batch: the input layout of every packed forward.

B rows of lengths ``l_0 .. l_{B-1}`` become one ``(T,)`` token vector, ``T = sum(l_b)``, and the
cumulative starts ``cu_seqlens = [0, l_0, l_0 + l_1, ..., T]`` (flash-attention's varlen
convention): row ``b`` is ``input_ids[cu_seqlens[b]:cu_seqlens[b + 1]]``. No padding is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike


def cumulative_lengths(lengths: ArrayLike) -> np.ndarray:
    """``(B,)`` row lengths -> ``(B+1,) int64`` cumulative starts ``[0, l_0, l_0 + l_1, ..., T]``.

    The numpy form of `pack`'s ``cu_seqlens`` (before the int32 cast), for callers that gather rows
    themselves (the loader's arena) or index with the offsets.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def pack(token_arrays: Sequence[ArrayLike]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Concatenate B token rows into the packed-forward inputs (CPU tensors; move them yourself).

    Args:
        token_arrays: B 1-D integer arrays (numpy, lists or CPU tensors), one per sequence.

    Returns:
        input_ids: ``(T,) int64``, the rows back to back.
        cu_seqlens: ``(B+1,) int32``, row ``b`` spans ``[cu_seqlens[b], cu_seqlens[b + 1])``.
        max_seqlen: ``int``, the longest row (0 for no rows).
    """
    rows = [np.asarray(t, dtype=np.int64).reshape(-1) for t in token_arrays]
    lengths = np.array([r.size for r in rows], dtype=np.int64)
    ids = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    cu = cumulative_lengths(lengths).astype(np.int32)
    return torch.from_numpy(ids), torch.from_numpy(cu), int(lengths.max()) if rows else 0


__all__ = ["cumulative_lengths", "pack"]
