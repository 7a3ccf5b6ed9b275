"""torch.compile of the packed ESM-2 layer: the attention backend stays inside the compiled graph,
outputs match eager, and one graph serves every layer and batch shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.config import EncoderConfig
from pipeline.models.esm2 import load_esm2

SPEC = "random:esm2_t6_8M_UR50D"


def batch(model, lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = [
        torch.from_numpy(
            model.tokenizer.encode("".join("ACDEFGHIKLMNPQRSTVWY"[i] for i in rng.integers(0, 20, n)))
        )
        for n in lengths
    ]
    cu = torch.tensor([0, *np.cumsum([t.numel() for t in ids])], dtype=torch.int32)
    return torch.cat(ids), cu, max(t.numel() for t in ids)


def test_compiled_graph_keeps_the_sdpa_backend():
    torch._dynamo.reset()
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = load_esm2(EncoderConfig(SPEC), "cpu")
    compiled = load_esm2(EncoderConfig(SPEC, compile=True), "cpu")
    compiled.disable_compile()
    compiled.enable_compile(recording_backend)
    assert compiled.compiled and compiled.backend == "sdpa"
    with torch.inference_mode():
        for lengths in ([12, 3, 30], [7, 44], [5, 9, 21, 2]):
            args = batch(eager, lengths)
            torch.testing.assert_close(compiled(*args), eager(*args), atol=1e-5, rtol=1e-5)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert any("scaled_dot_product_attention" in t for t in targets), targets
    # dynamic shapes: one graph for 6 layers x 3 batch shapes (a second only if dynamo re-specialises)
    assert 1 <= len(graphs) <= 2, len(graphs)
    assert compiled.compile_stats()["unique_graphs"] >= 1


def test_disable_compile_setting_wins():
    model = load_esm2(EncoderConfig(SPEC, compile=True), "cpu", disable_compile=True)
    assert not model.compiled


@pytest.mark.slow
def test_inductor_compile_matches_eager_on_cpu():
    torch._dynamo.reset()
    eager = load_esm2(EncoderConfig(SPEC), "cpu")
    compiled = load_esm2(EncoderConfig(SPEC, compile=True), "cpu")
    with torch.inference_mode():
        for lengths in ([12, 3], [40, 6, 8]):
            args = batch(eager, lengths, seed=1)
            got, want = compiled.embed_packed(*args), eager.embed_packed(*args)
            assert F.cosine_similarity(got, want, dim=-1).min() > 0.99999


@pytest.mark.gpu
def test_compiled_graph_keeps_the_cuda_varlen_backend():
    torch._dynamo.reset()
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = load_esm2(EncoderConfig(SPEC, precision="fp16"), "cuda")
    compiled = load_esm2(EncoderConfig(SPEC, precision="fp16"), "cuda")
    compiled.enable_compile(recording_backend)
    assert compiled.backend in ("flash-attn", "torch-varlen")
    with torch.inference_mode():
        args = batch(eager, [12, 3, 30])
        torch.testing.assert_close(compiled(*args), eager(*args), atol=2e-3, rtol=2e-3)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert any("varlen" in t or "flash" in t for t in targets), targets
    assert not any("scaled_dot_product_attention" in t for t in targets), targets
