"""Token-budget batching: first-fit-decreasing (FFD) bin packing of sequence lengths.

Pure functions over integer token counts; no torch, no I/O. A batch is a list of row indices
whose token counts sum to at most the budget; a sequence longer than the budget gets a batch of
its own (it is never dropped or truncated here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.errors import ConfigError, InputError
from pipeline.prepare.shard import length_sorted_order

#: Default budget on CPU: big enough to amortise per-batch overhead, small enough for tests.
CPU_TOKEN_BUDGET = 2048
#: Bounds for the budget chosen on an accelerator. Beyond ~32K tokens a transformer layer's
#: matmuls are mostly saturated, and a larger budget only quantises the shard tail worse; a model
#: whose measured best is larger says so (``PackedEncoder.best_token_budget``, ESM-2 3B: 64K).
MIN_DEVICE_BUDGET = 4096
MAX_DEVICE_BUDGET = 32768


class _FirstFitTree:
    """Max segment tree over bins' free capacity: leftmost bin with room >= x in O(log bins)."""

    def __init__(self, max_bins: int) -> None:
        size = 1
        while size < max(1, max_bins):
            size *= 2
        self.size = size
        self.tree = [-1] * (2 * size)  # -1 = no bin there yet
        self.count = 0

    def leftmost_fit(self, need: int) -> int:
        """Index of the first bin whose free capacity is >= ``need``, or -1."""
        tree = self.tree
        if tree[1] < need:
            return -1
        node = 1
        while node < self.size:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        return node - self.size

    def set(self, index: int, free: int) -> None:
        tree = self.tree
        node = index + self.size
        tree[node] = free
        node //= 2
        while node:
            best = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == best:
                break
            tree[node] = best
            node //= 2

    def new_bin(self, free: int) -> int:
        index = self.count
        if index >= self.size:  # cannot happen with the bound used below; guard anyway
            raise RuntimeError(f"bin tree overflow at {index} bins")
        self.count += 1
        self.set(index, free)
        return index


def plan_batches(lengths: Sequence[int] | np.ndarray, budget: int) -> list[list[int]]:
    """Pack sequences into batches of at most ``budget`` tokens by first-fit decreasing.

    Args:
        lengths: ``(N,)`` token count of each row (special tokens included), each >= 1.
        budget: maximum tokens per batch.
    Returns:
        Batches as lists of row indices (into ``lengths``). Every index appears exactly once.
        Sequences longer than ``budget`` come first, one per batch; then the FFD bins in the
        order they were opened (longest sequences first). Within a batch rows are in
        decreasing length order.

    Items are visited longest first; each goes to the first (oldest) bin with room. Runs of
    equal length are placed in one step per bin (as many as fit), which is exactly what
    item-by-item first fit would do, so the cost is ~O((bins + distinct lengths) log bins).
    """
    if budget < 1:
        raise ConfigError(f"token budget {budget} must be >= 1")
    arr = np.asarray(lengths, dtype=np.int64)
    if arr.ndim != 1:
        raise InputError(f"lengths must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return []
    if int(arr.min()) < 1:
        bad = int(np.argmin(arr))
        raise InputError(f"row {bad} has {int(arr[bad])} tokens; every sequence needs >= 1 token")

    order = length_sorted_order(arr)
    sorted_lengths = arr[order]
    n_over = int(np.searchsorted(-sorted_lengths, -budget, side="left"))
    batches: list[list[int]] = [[int(i)] for i in order[:n_over]]

    fit_order = order[n_over:]
    fit_lengths = sorted_lengths[n_over:]
    if fit_order.size == 0:
        return batches
    # First fit leaves at most one bin at most half full, so bins <= 2 * total / budget + 1.
    total = int(fit_lengths.sum())
    max_bins = min(int(fit_order.size), 2 * (total // budget) + 2)
    tree = _FirstFitTree(max_bins)
    chunks: list[list[np.ndarray]] = []
    free: list[int] = []

    # Boundaries of runs of equal length in the (descending) sorted lengths.
    change = np.flatnonzero(np.diff(fit_lengths)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [fit_lengths.size]))
    for start, end in zip(starts.tolist(), ends.tolist()):
        length = int(fit_lengths[start])
        pos = start
        while pos < end:
            b = tree.leftmost_fit(length)
            if b < 0:
                b = tree.new_bin(budget)
                chunks.append([])
                free.append(budget)
            take = min(end - pos, free[b] // length)
            chunks[b].append(fit_order[pos : pos + take])
            free[b] -= take * length
            tree.set(b, free[b])
            pos += take
    batches.extend(np.concatenate(c).tolist() for c in chunks)
    return batches


def batch_tokens(lengths: Sequence[int] | np.ndarray, batches: Sequence[Sequence[int]]) -> list[int]:
    """Total tokens of each batch."""
    arr = np.asarray(lengths, dtype=np.int64)
    return [int(arr[np.asarray(b, dtype=np.int64)].sum()) if len(b) else 0 for b in batches]


def packing_efficiency(
    lengths: Sequence[int] | np.ndarray, batches: Sequence[Sequence[int]], budget: int
) -> float:
    """Real tokens / (batches x budget), in [0, 1].

    A batch holding one sequence longer than the budget counts its own length as its capacity,
    so oversize rows neither inflate nor deflate the figure. Empty plans score 1.0.
    """
    if not batches:
        return 1.0
    tokens = batch_tokens(lengths, batches)
    capacity = sum(max(budget, t) for t in tokens)
    return sum(tokens) / capacity


def choose_token_budget(
    *,
    device_type: str,
    hidden_size: int,
    dtype_bytes: int,
    free_bytes: int | None,
    override: int | None = None,
    max_budget: int | None = None,
) -> int:
    """Pick the tokens per packed batch.

    ``override`` (EmbedConfig.token_budget / ``VIRNUCPRO_TOKEN_BUDGET``) wins. On CPU the
    default is `CPU_TOKEN_BUDGET`. On an accelerator: a quarter of the free memory divided by a
    per-token activation estimate (about 48 live values of width ``hidden_size`` per token in a
    transformer layer: residual, norms, q/k/v with fp32 rotary copies, the 4x MLP), rounded down
    to a multiple of 256 and clamped to [`MIN_DEVICE_BUDGET`, ``max_budget``] (the model's measured
    best, `MAX_DEVICE_BUDGET` when None).
    """
    if override is not None:
        if override < 16:
            raise ConfigError(f"token budget {override} is too small; use at least 16 tokens")
        return int(override)
    if device_type == "cpu" or free_bytes is None:
        return CPU_TOKEN_BUDGET
    per_token = 48 * hidden_size * max(dtype_bytes, 2)
    budget = (free_bytes // 4) // per_token
    budget = (budget // 256) * 256
    return int(min(max_budget or MAX_DEVICE_BUDGET, max(MIN_DEVICE_BUDGET, budget)))


__all__ = [
    "CPU_TOKEN_BUDGET",
    "batch_tokens",
    "choose_token_budget",
    "length_sorted_order",
    "packing_efficiency",
    "plan_batches",
]
