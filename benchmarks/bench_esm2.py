"""Packed ESM-2 against vanilla fair-esm (length-sorted padded batches), same data, same session.

Run: ``pytest benchmarks/bench_esm2.py --benchmark-autosave``. CPU-sized (8M model, fp32, sdpa)
by default, GPU-sized (the `bench_size` model, fp16, best backend) when CUDA is present. The
packed/vanilla throughput ratio is stored in the packed benchmark's ``extra_info``; the vanilla
benchmark runs first in the module so the ratio is available.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.config import EncoderConfig
from pipeline.embed.planning import plan_batches
from pipeline.models.esm2 import load_esm2
from pipeline.models.packing import pack

# One pytest-benchmark group per model and stage: `--benchmark-compare` tables read per group.
pytestmark = pytest.mark.benchmark(group="esm2 embed")

AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
_RESULTS: dict[str, float] = {}
ROUNDS = 3


@pytest.fixture(scope="module")
def setup(bench_size, bench_device):
    gpu = bench_device == "cuda"
    precision = "fp16" if gpu else "fp32"
    model = load_esm2(EncoderConfig(bench_size.esm_model, precision=precision), bench_device)
    rng = np.random.default_rng(7)
    n, budget = (4096, 16384) if gpu else (12, 1024)
    lengths = np.where(rng.random(n) < 0.8, 166, rng.integers(20, 166, n))  # 500 bp frames
    seqs = [AMINO_ACIDS[rng.integers(0, 20, int(m))].tobytes().decode() for m in lengths]
    ids = [model.tokenizer.encode(s) for s in seqs]
    tokens = np.array([t.size for t in ids])
    packed = []
    for idx in plan_batches(tokens, budget):
        input_ids, cu, max_seqlen = pack([ids[i] for i in idx])
        packed.append((input_ids.to(bench_device), cu, max_seqlen))
    order = np.argsort(tokens, kind="stable")
    padded, start = [], 0
    while start < n:  # fair-esm's toks_per_batch rule: rows x longest <= budget
        stop = start + 1
        while stop < n and tokens[order[stop]] * (stop + 1 - start) <= budget:
            stop += 1
        rows = order[start:stop]
        toks = torch.full((len(rows), int(tokens[rows].max())), model.tokenizer.pad_id, dtype=torch.int64)
        for r, i in enumerate(rows):
            toks[r, : tokens[i]] = torch.from_numpy(ids[i])
        padded.append(toks.to(bench_device))
        start = stop
    return model, packed, padded, int(tokens.sum())


def _sync(model):
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def test_vanilla_fair_esm(benchmark, setup):
    model, _, padded, tokens = setup
    layer = model.num_layers

    def run():
        with torch.inference_mode():
            for toks in padded:
                rep = model.esm(toks, repr_layers=[layer])["representations"][layer]
                keep = (toks > 2).unsqueeze(-1).float()  # ids 0-2 are <cls>, <pad>, <eos>
                (rep.float() * keep).sum(1) / keep.sum(1)
        _sync(model)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    _RESULTS["vanilla"] = tokens / benchmark.stats.stats.median
    benchmark.extra_info.update(
        {"tokens": tokens, "tokens_per_s": _RESULTS["vanilla"], "precision": model.precision}
    )


def test_packed(benchmark, setup):
    model, packed, _, tokens = setup

    def run():
        with torch.inference_mode():
            for ids, cu, maxlen in packed:
                model.embed_packed(ids, cu, maxlen)
        _sync(model)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    model.check_finite("bench_esm2")
    rate = tokens / benchmark.stats.stats.median
    benchmark.extra_info.update(
        {"tokens": tokens, "tokens_per_s": rate, "backend": model.backend, "precision": model.precision}
    )
    if "vanilla" in _RESULTS:
        benchmark.extra_info["speedup_vs_vanilla"] = rate / _RESULTS["vanilla"]
