"""FFD token-budget packing: every row in exactly once, budgets respected, FFD order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import ConfigError, InputError
from pipeline.embed.planning import (
    choose_token_budget,
    length_sorted_order,
    packing_efficiency,
    plan_batches,
)


def _naive_ffd(lengths: list[int], budget: int) -> list[list[int]]:
    """Textbook first-fit decreasing, item by item, scanning bins left to right (test oracle)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    over = [[i] for i in order if lengths[i] > budget]
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        if lengths[i] > budget:
            continue
        for b, room in enumerate(free):
            if room >= lengths[i]:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(budget - lengths[i])
    return over + bins


def test_hand_worked_example() -> None:
    # 6 -> bin0 (4 left), 5 -> bin1 (5 left), 4 -> bin0 (full), 3 -> bin1 (2 left), 2 -> bin1.
    assert plan_batches([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]


def test_oversize_rows_get_their_own_batch_and_are_kept() -> None:
    batches = plan_batches([3, 50, 4, 12, 2], 10)
    assert batches[:2] == [[1], [3]]  # 50 and 12 exceed the budget: alone, longest first
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[2:] == [[2, 0, 4]]  # 4 + 3 + 2 = 9 <= 10


def test_equal_lengths_fill_bins_exactly() -> None:
    batches = plan_batches([5] * 7, 10)
    assert batches == [[0, 1], [2, 3], [4, 5], [6]]
    assert packing_efficiency([5] * 7, batches, 10) == pytest.approx(35 / 40)


def test_empty_and_bad_inputs() -> None:
    assert plan_batches([], 10) == []
    with pytest.raises(InputError, match="row 1 has 0 tokens"):
        plan_batches([3, 0], 10)
    with pytest.raises(ConfigError, match="budget"):
        plan_batches([3], 0)


def test_length_sorted_order_is_stable_descending() -> None:
    assert length_sorted_order([2, 5, 2, 5, 1]).tolist() == [1, 3, 0, 2, 4]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=70), min_size=0, max_size=300),
    st.integers(min_value=1, max_value=64),
)
def test_matches_textbook_ffd_and_counts_every_id(lengths: list[int], budget: int) -> None:
    batches = plan_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every id in, exactly once
    for b in batches:
        total = sum(lengths[i] for i in b)
        assert total <= budget or len(b) == 1  # only a lone oversize row may exceed
    assert batches == _naive_ffd(lengths, budget)


def test_large_mixed_input_counts_every_id() -> None:
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(20, 53, 20_000), rng.integers(900, 1500, 30)])
    batches = plan_batches(lengths, 1024)
    flat = np.concatenate([np.asarray(b) for b in batches])
    assert flat.size == lengths.size and np.array_equal(np.sort(flat), np.arange(lengths.size))
    oversize = [b for b in batches if lengths[b].sum() > 1024]
    assert len(oversize) == int((lengths > 1024).sum()) and all(len(b) == 1 for b in oversize)


def test_efficiency_counts_oversize_capacity_as_its_length() -> None:
    # one oversize batch of 30 tokens (capacity 30) + one batch of 8 real tokens (capacity 10)
    assert packing_efficiency([30, 8], [[0], [1]], 10) == pytest.approx(38 / 40)
    assert packing_efficiency([], [], 10) == 1.0


def test_choose_token_budget() -> None:
    assert choose_token_budget(device_type="cpu", hidden_size=320, dtype_bytes=4, free_bytes=None) == 2048
    assert (
        choose_token_budget(
            device_type="cuda", hidden_size=2560, dtype_bytes=2, free_bytes=None, override=777
        )
        == 777
    )
    # 100 GiB free, 2560-wide fp16 model: capped at the upper bound
    assert (
        choose_token_budget(device_type="cuda", hidden_size=2560, dtype_bytes=2, free_bytes=100 * 2**30)
        == 32768
    )
    # a model whose measured best is larger (ESM-2: 64K) may go past the default cap, memory allowing
    assert (
        choose_token_budget(
            device_type="cuda", hidden_size=2560, dtype_bytes=2, free_bytes=100 * 2**30, max_budget=65536
        )
        == 65536
    )
    assert (
        choose_token_budget(
            device_type="cuda", hidden_size=2560, dtype_bytes=2, free_bytes=40 * 2**30, max_budget=65536
        )
        == 43520
    )
    # 1 GiB free: floor of the device range
    assert choose_token_budget(device_type="cuda", hidden_size=2560, dtype_bytes=2, free_bytes=2**30) == 4096
    with pytest.raises(ConfigError):
        choose_token_budget(device_type="cpu", hidden_size=1, dtype_bytes=4, free_bytes=None, override=3)
