"""FFD packing speed and efficiency on the two frame-length mixes VirNucPro produces.

Run: ``pytest benchmarks/bench_packing.py --benchmark-autosave``. Efficiency (real tokens /
(batches x budget)) is stored in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.embed.planning import packing_efficiency, plan_batches

# One pytest-benchmark group per model and stage: `--benchmark-compare` tables read per group.
pytestmark = pytest.mark.benchmark(group="embed planning")


def frame_lengths(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Token counts (residues + BOS/EOS) of six-frame translations.

    ``short-read``: 150 bp reads -> mostly 49-50 aa frames, a fifth shorter (read ends, trimmed
    reads), ~50 aa on average. ``500bp``: 500 bp chunks -> mostly 165-166 aa, a fifth shorter
    (sequence tails), ~166 aa on average.
    """
    rng = np.random.default_rng(seed)
    full, low = {"short-read": (50, 15), "500bp": (166, 40)}[kind]
    lengths = np.where(
        rng.random(n) < 0.8, rng.integers(full - 1, full + 1, n), rng.integers(low, full - 1, n)
    )
    return lengths.astype(np.int64) + 2


@pytest.mark.parametrize("budget", [4096, 16384, 32768])
@pytest.mark.parametrize("kind", ["short-read", "500bp"])
def test_ffd_plan(benchmark, kind: str, budget: int) -> None:
    lengths = frame_lengths(kind, 200_000)
    batches = benchmark(plan_batches, lengths, budget)
    eff = packing_efficiency(lengths, batches, budget)
    benchmark.extra_info.update(
        {
            "rows": int(lengths.size),
            "tokens": int(lengths.sum()),
            "batches": len(batches),
            "packing_efficiency": round(eff, 5),
        }
    )
    assert sum(len(b) for b in batches) == lengths.size
