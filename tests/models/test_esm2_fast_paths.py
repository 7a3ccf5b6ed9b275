"""The engine's fast paths against fair-esm's fp32 forward on CPU (GELU in the matmul epilogue, the
compiled layer with static widths), and ``--precision fp8``: refused with a clear error where FP8
matmuls cannot run, close to fp32 where they can (GPU test)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fixtures.esm2 import pack, proteins

from pipeline.core.config import EncoderConfig
from pipeline.core.errors import BackendUnavailableError, ConfigError
from pipeline.models import fp8
from pipeline.models.esm2 import PackedESM2, load_esm2

SPEC = "random:esm2_t6_8M_UR50D"


def fair_esm_means(model: PackedESM2, seqs) -> torch.Tensor:
    alphabet = model.esm.alphabet
    out = []
    for seq in seqs:
        tokens = torch.tensor([[alphabet.cls_idx, *alphabet.encode(seq), alphabet.eos_idx]])
        rep = model.esm(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]
        out.append(rep[0, 1 : len(seq) + 1].mean(0))
    return torch.stack(out)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():
        yield


def test_gelu_epilogue_matches_fair_esm_fp32():
    # the epilogue is chosen on CUDA in half precision; forced here so CPU checks the same call (bias,
    # transposed weight) through torch._addmm_activation
    exact = load_esm2(EncoderConfig(SPEC), "cpu")
    fused = PackedESM2(exact.esm, spec=SPEC, precision="fp32", gelu_epilogue=True)
    assert fused.gelu_epilogue and not exact.gelu_epilogue
    seqs = proteins([120, 3, 47, 300], seed=7)
    got = fused.embed_packed(*pack(fused, seqs))
    want = fair_esm_means(exact, seqs)
    cos = F.cosine_similarity(got.double(), want.double(), dim=-1)
    assert cos.min() >= 0.99999, cos  # (CPU computes the exact GELU here; cuBLASLt the tanh form)


def test_compiled_layer_keeps_widths_static_and_matches_eager():
    torch._dynamo.reset()
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(example_inputs)
        return gm.forward

    eager = load_esm2(EncoderConfig(SPEC), "cpu")
    compiled = load_esm2(EncoderConfig(SPEC), "cpu")
    compiled.enable_compile(recording_backend)
    for lengths in ([12, 3, 30], [7, 44], [5, 9, 21, 2], [33, 60]):
        args = pack(eager, proteins(lengths, seed=len(lengths)))
        torch.testing.assert_close(compiled(*args), eager(*args), atol=1e-5, rtol=1e-5)
    # 6 layers x 4 batch shapes: one graph, plus one when max_seqlen first changes (the padded CPU
    # attention specialises a batch of one sequence: another graph, not exercised here)
    assert 1 <= len(graphs) <= 2, len(graphs)
    # only token count, sequence count and max_seqlen may be symbolic: not heads, widths or eps
    symbolic = {str(x) for x in graphs[-1] if isinstance(x, torch.SymInt)}
    assert len(symbolic) <= 3, symbolic
    widths = [x for x in graphs[-1] if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == 320]
    assert widths and all(isinstance(d, int) for w in widths for d in w.shape)


def test_fp8_refused_on_cpu_before_loading():
    with pytest.raises(BackendUnavailableError, match="fp8.*NVIDIA GPU") as info:
        load_esm2(EncoderConfig(SPEC, precision="fp8"), "cpu")
    assert "--precision bf16" in str(info.value)
    model = load_esm2(EncoderConfig(SPEC), "cpu")
    with pytest.raises(BackendUnavailableError, match="fp8"):
        PackedESM2(model.esm, spec=SPEC, precision="fp8")


def test_fp8_refused_on_gpus_without_fp8_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA A100")
    reason = fp8.fp8_unavailable_reason("cuda:0")
    assert reason is not None and "A100" in reason and "8.0" in reason and "8.9" in reason
    with pytest.raises(BackendUnavailableError, match="A100"):
        fp8.check_fp8("cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(fp8.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'virnucpro[fp8]'" in fp8.fp8_unavailable_reason("cuda:0")


def test_unknown_fp8_target():
    model = load_esm2(EncoderConfig(SPEC), "cpu")
    with pytest.raises(ConfigError, match="attn"):
        PackedESM2(model.esm, spec=SPEC, precision="fp32", fp8_targets=("fc1", "attn"))


@pytest.mark.gpu
def test_fp8_close_to_fp32_where_supported():
    if fp8.fp8_unavailable_reason("cuda") is not None:
        pytest.skip(fp8.fp8_unavailable_reason("cuda"))
    seqs = proteins([300, 1, 45, 166, 3], seed=5)
    reference = load_esm2(EncoderConfig(SPEC, precision="fp32"), "cuda").embed_reference(seqs)
    low = load_esm2(EncoderConfig(SPEC, precision="fp8"), "cuda")
    assert low.fp8_targets == ("fc1", "fc2") and low.compiled and low.dtype == torch.bfloat16
    got = low.embed_packed(*pack(low, seqs))
    low.check_finite("gpu fp8 test")
    assert F.cosine_similarity(got.double(), reference.double(), dim=-1).min() >= 0.99
