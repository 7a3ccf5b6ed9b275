"""torch.compile of the packed ESM-2 layer: the attention backend stays inside the compiled graph,
the compiled forward (inductor's generated kernels, not the traced graph run eagerly) matches eager,
and one graph serves every layer and batch shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def recording_inductor(graphs: list) -> object:
    """A torch.compile backend that keeps each captured FX graph for inspection and hands it to
    inductor, so the model runs inductor's generated code. (A backend returning ``gm.forward`` would
    run the traced graph eagerly, and "compiled vs eager" would compare eager with itself.)"""
    inductor = torch._dynamo.lookup_backend("inductor")

    def backend(gm, example_inputs):
        graphs.append(gm)
        return inductor(gm, example_inputs)

    return backend


def call_targets(graphs: list) -> set[str]:
    return {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}


@pytest.mark.slow  # inductor's first CPU compile: ~40 s on two cores with a cold cache
def test_inductor_compiled_layer_keeps_sdpa_and_matches_eager_on_cpu():
    torch._dynamo.reset()
    graphs: list = []
    eager = load_esm2(EncoderConfig(SPEC), "cpu")
    compiled = load_esm2(EncoderConfig(SPEC, compile=True), "cpu")
    compiled.disable_compile()
    compiled.enable_compile(recording_inductor(graphs))
    assert compiled.compiled and compiled.backend == "sdpa"
    with torch.inference_mode():
        for lengths in ([12, 3, 30], [7, 44], [5, 9, 21, 2]):
            args = batch(eager, lengths)
            got, want = compiled(*args), eager(*args)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                compiled.pool(got, args[1]), eager.pool(want, args[1]), atol=1e-5, rtol=1e-4
            )
    assert any("scaled_dot_product_attention" in t for t in call_targets(graphs))
    # dynamic shapes: one graph for 6 layers x 3 batch shapes (a second only if dynamo re-specialises)
    assert 1 <= len(graphs) <= 2, len(graphs)
    assert compiled.compile_stats()["unique_graphs"] >= 1  # what the run log reports


def test_disable_compile_setting_wins():
    model = load_esm2(EncoderConfig(SPEC, compile=True), "cpu", disable_compile=True)
    assert not model.compiled


@pytest.mark.gpu
def test_compiled_graph_keeps_the_cuda_varlen_backend():
    torch._dynamo.reset()
    graphs: list = []
    eager = load_esm2(EncoderConfig(SPEC, precision="fp16"), "cuda")
    compiled = load_esm2(EncoderConfig(SPEC, precision="fp16"), "cuda")
    compiled.enable_compile(recording_inductor(graphs))
    assert compiled.backend in ("flash-attn", "torch-varlen")
    with torch.inference_mode():
        args = batch(eager, [12, 3, 30, 200, 1])
        got, want = compiled(*args), eager(*args)
        # fp16 hidden states after 6 layers: fused and unfused kernels round differently (1-2 ulp at
        # |x| ~ 4-8 is 4e-3-8e-3); a wrong kernel is off by far more, and the pooled rows must agree.
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
        pooled = torch.nn.functional.cosine_similarity(
            compiled.pool(got, args[1]), eager.pool(want, args[1]), dim=1
        )
        assert pooled.min().item() > 0.9999, pooled
    targets = call_targets(graphs)
    assert any("varlen" in t or "flash" in t for t in targets), targets
    assert not any("scaled_dot_product_attention" in t for t in targets), targets
