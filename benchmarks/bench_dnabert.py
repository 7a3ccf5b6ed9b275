"""DNABERT-S forward on CPU: packed (one token-budget batch, sdpa backend) against the padded
reference-style forward, same tiny random model, same sequences (random DNA 150-500 bp).

Run: ``pytest benchmarks/bench_dnabert.py --benchmark-autosave``; compare medians across runs with
``--benchmark-compare``. Tokens and padding efficiency go to each benchmark's ``extra_info``; the
GPU-sized measurement is ``benchmarks/gpu/dnabert_device.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.config import EncoderConfig
from pipeline.models.dnabert_s import load_dnabert_s
from pipeline.models.dnabert_s.model import masked_mean, pad_batch, padded_reference_forward
from pipeline.models.packing import pack

# One pytest-benchmark group per model and stage: `--benchmark-compare` tables read per group.
pytestmark = pytest.mark.benchmark(group="dnabert-s embed")

N_SEQUENCES = 48


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", precision="fp32"), "cpu")
    rng = np.random.default_rng(0)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    seqs = [bases[rng.integers(0, 4, n)].tobytes().decode() for n in rng.integers(150, 501, N_SEQUENCES)]
    encoded = model.tokenizer.encode_batch(seqs)
    return model, encoded


def test_packed_forward(benchmark, setup):
    model, encoded = setup
    lengths = [e.size for e in encoded]
    ids, cu, max_seqlen = pack(encoded)

    def run():
        with torch.inference_mode():
            return model.embed_packed(ids, cu, max_seqlen)

    out = benchmark(run)
    benchmark.extra_info.update(
        {"tokens": int(sum(lengths)), "sequences": len(lengths), "efficiency": 1.0, "backend": model.backend}
    )
    assert out.shape == (len(lengths), model.info.hidden_size)


def test_padded_forward(benchmark, setup):
    model, encoded = setup
    ids, mask = pad_batch(encoded, model.tokenizer.pad_id, "cpu")
    params = dict(model.bert.state_dict())

    def run():
        with torch.inference_mode():
            return masked_mean(padded_reference_forward(params, model.arch, ids, mask), mask)

    out = benchmark(run)
    tokens = int(mask.sum())
    benchmark.extra_info.update(
        {
            "tokens": tokens,
            "sequences": len(encoded),
            "efficiency": round(tokens / mask.numel(), 4),
            "backend": "matmul-softmax",
        }
    )
    assert out.shape == (len(encoded), model.info.hidden_size)
