"""Helpers shared by the device benchmark scripts in this folder (not a benchmark itself).

Everything here imports torch lazily, like the scripts, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def synchronize(device) -> None:
    """Wait for the device's queued work (no-op on CPU), so wall-clock times cover the kernels."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device) -> float:
    """Seconds ``fn()`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def padded_plan(lengths: list[int], budget: int) -> list[list[int]]:
    """Length-sorted batches with ``len(batch) * longest <= budget`` (the usual padded batching,
    fair-esm's ``toks_per_batch`` rule); a sequence longer than ``budget`` gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        grown = max(longest, lengths[i])
        if cur and grown * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, grown = [], lengths[i]
        cur.append(i)
        longest = grown
    if cur:
        batches.append(cur)
    return batches


def preload_packed(
    token_ids: list[np.ndarray], plan: list[list[int]], device, cu_on_device: bool = True
) -> list[tuple]:
    """Every batch of ``plan`` packed (`pipeline.models.packing.pack`) and copied to the device ahead
    of a timed loop: one ``(input_ids (T,) int64, cu_seqlens (B+1,) int32, max_seqlen, indices)``
    per batch; ``cu_seqlens`` stays on the CPU when ``cu_on_device`` is false."""
    from pipeline.models.packing import pack

    out = []
    for idx in plan:
        ids, cu, max_seqlen = pack([token_ids[i] for i in idx])
        out.append((ids.to(device), cu.to(device) if cu_on_device else cu, max_seqlen, idx))
    return out


def save(path: Path, result: dict[str, Any]) -> None:
    """Write the result JSON atomically (a partial result survives a later failure or timeout)."""
    from pipeline.core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2, default=str))
