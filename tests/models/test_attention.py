"""pipeline.models.attention: backend resolution and the packed kernels against a per-sequence loop."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import BackendUnavailableError, ConfigError
from pipeline.models import attention
from pipeline.models.attention import (
    available_backends,
    flex_block_mask,
    flex_varlen,
    resolve_backend,
    sdpa_varlen,
    sequence_index,
    varlen_attention,
)


def naive(q, k, v, lengths, scale, slopes=None):
    """Softmax attention written out per sequence (float64), the ground truth."""
    outs, start = [], 0
    for n in lengths:
        qq, kk, vv = (x[start : start + n].double().transpose(0, 1) for x in (q, k, v))  # (H, n, Dh)
        scores = qq @ kk.transpose(-1, -2) * scale
        if slopes is not None:
            idx = torch.arange(n)
            scores = scores - slopes.double()[:, None, None] * (idx[:, None] - idx[None, :]).abs()
        outs.append((scores.softmax(-1) @ vv).transpose(0, 1))
        start += n
    return torch.cat(outs).to(q.dtype)


def packed(lengths, heads=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, dim, generator=g) for _ in range(3))
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return q, k, v, cu


LENGTHS = [5, 1, 17, 2, 9]
SLOPES = torch.tensor([0.5, 0.125, 0.03125])


def test_sequence_index_restarts_positions():
    cu = torch.tensor([0, 3, 4, 6], dtype=torch.int32)
    seq, pos = sequence_index(cu, 6)
    assert seq.tolist() == [0, 0, 0, 1, 2, 2]
    assert pos.tolist() == [0, 1, 2, 0, 0, 1]


@pytest.mark.parametrize("slopes", [None, SLOPES], ids=["no-bias", "alibi"])
def test_sdpa_matches_per_sequence_attention(slopes):
    q, k, v, cu = packed(LENGTHS)
    out = varlen_attention(q, k, v, cu, max(LENGTHS), backend="sdpa", scale=0.3, alibi_slopes=slopes)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, naive(q, k, v, LENGTHS, 0.3, slopes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slopes", [None, SLOPES], ids=["no-bias", "alibi"])
def test_flex_masks_match_per_sequence_attention(slopes):
    # FlexAttention's unfused eager path checks the document mask and ALiBi score_mod on CPU
    q, k, v, cu = packed(LENGTHS)
    out = flex_varlen(q, k, v, cu, 0.3, slopes, compiled=False)
    torch.testing.assert_close(out, naive(q, k, v, LENGTHS, 0.3, slopes), atol=1e-5, rtol=1e-5)


# Lengths whose packed batch spans several 128-token flex blocks, with boundaries inside blocks and
# blocks that lie wholly inside one sequence (the mask's "full block" fast path).
BLOCK_LENGTHS = [3, 150, 1, 200, 7, 40]


@pytest.mark.parametrize("lengths", [LENGTHS, BLOCK_LENGTHS], ids=["one-block", "several-blocks"])
@pytest.mark.parametrize("slopes", [None, SLOPES], ids=["no-bias", "alibi"])
def test_flex_block_mask_matches_per_sequence_attention(lengths, slopes):
    # The models build the document mask once per forward with `flex_block_mask` and pass it to every
    # layer, so this is the mask production uses (flex_varlen's own mask is only its fallback).
    q, k, v, cu = packed(lengths)
    mask = flex_block_mask(cu, q.shape[0], compiled=False)
    out = flex_varlen(q, k, v, cu, 0.3, slopes, compiled=False, block_mask=mask)
    torch.testing.assert_close(out, naive(q, k, v, lengths, 0.3, slopes), atol=1e-5, rtol=1e-5)


def test_no_attention_across_sequences():
    q, k, v, cu = packed(LENGTHS)
    base = sdpa_varlen(q, k, v, cu, max(LENGTHS), 0.3)
    k2, v2 = k.clone(), v.clone()
    k2[6:23] += 5.0  # the third sequence only
    v2[6:23] -= 3.0
    out = sdpa_varlen(q, k2, v2, cu, max(LENGTHS), 0.3)
    keep = torch.ones(q.shape[0], dtype=torch.bool)
    keep[6:23] = False
    torch.testing.assert_close(out[keep], base[keep], atol=1e-6, rtol=0)
    assert not torch.allclose(out[~keep], base[~keep])


def test_cpu_offers_sdpa_only_and_auto_picks_it():
    assert available_backends(torch.device("cpu"), alibi=False) == ["sdpa"]
    assert available_backends("cpu", alibi=True) == ["sdpa"]
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("sdpa", "cpu", alibi=True) == "sdpa"
    assert resolve_backend("reference", "cpu") == "reference"


@pytest.mark.parametrize("name", ["torch-varlen", "flash-attn", "flex"])
def test_unavailable_backend_on_cpu_raises(name):
    with pytest.raises(BackendUnavailableError, match=name):
        resolve_backend(name, torch.device("cpu"))


@pytest.mark.skipif(not attention.HAS_TORCH_VARLEN, reason="torch without torch.nn.attention.varlen")
def test_torch_varlen_refused_for_alibi_and_fp32():
    cuda = torch.device("cuda")  # resolution only: needs no GPU
    with pytest.raises(BackendUnavailableError, match="ALiBi"):
        resolve_backend("torch-varlen", cuda, alibi=True)
    with pytest.raises(BackendUnavailableError, match="fp16/bf16"):
        resolve_backend("torch-varlen", cuda, dtype=torch.float32)
    assert "torch-varlen" not in available_backends(cuda, alibi=True)
    assert "torch-varlen" not in available_backends(cuda, alibi=False, dtype=torch.float32)


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="nonsense"):
        resolve_backend("nonsense", "cpu")


def test_reference_is_not_a_kernel():
    q, k, v, cu = packed([3])
    with pytest.raises(ConfigError, match="reference"):
        varlen_attention(q, k, v, cu, 3, backend="reference", scale=1.0)


def test_mismatched_shapes_rejected():
    q, k, v, cu = packed([3])
    with pytest.raises(ConfigError, match="T, H, Dh"):
        varlen_attention(q, k[:, :2], v, cu, 3, backend="sdpa", scale=1.0)


# Tolerance against the float64 loop (run on the same rounded inputs) per compute dtype: the kernels
# round the probabilities and the output to it.
CUDA_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("longest", [attention.SHORT_SEQUENCE_TOKENS, attention.SHORT_SEQUENCE_TOKENS + 1])
def test_torch_varlen_short_and_long_batches_agree_with_naive(longest, dtype):
    """Both kernels behind torch-varlen: the memory-efficient one up to SHORT_SEQUENCE_TOKENS, FA2 above."""
    try:
        resolve_backend("torch-varlen", "cuda", dtype=dtype)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    lengths = [1, 52, longest, 3, 40, 64, 17]
    q, k, v, cu = (t.cuda() for t in packed(lengths, heads=4, dim=64))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    want = naive(q.cpu().double(), k.cpu().double(), v.cpu().double(), lengths, 0.125)
    out = varlen_attention(q, k, v, cu, max(lengths), backend="torch-varlen", scale=0.125)
    tol = CUDA_TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), want.double(), atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCE), ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("slopes", [None, SLOPES], ids=["no-bias", "alibi"])
@pytest.mark.parametrize("backend", ["flash-attn", "torch-varlen", "flex", "flex-eager", "sdpa"])
def test_cuda_backends_agree_with_naive(backend, dtype, slopes):
    kernel = backend.removesuffix("-eager")
    try:
        resolve_backend(kernel, "cuda", alibi=slopes is not None, dtype=dtype)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    q, k, v, cu = (t.cuda() for t in packed(BLOCK_LENGTHS, heads=3, dim=64))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    want = naive(q.cpu().double(), k.cpu().double(), v.cpu().double(), BLOCK_LENGTHS, 0.125, slopes)
    cuda_slopes = None if slopes is None else slopes.cuda()
    if backend == "flex-eager":  # FlexAttention's unfused path on the GPU, with the models' block mask
        mask = flex_block_mask(cu, q.shape[0], compiled=False)
        out = flex_varlen(q, k, v, cu, 0.125, cuda_slopes, compiled=False, block_mask=mask)
    else:  # as the models call it: the flex mask built once per batch by flex_block_mask
        mask = flex_block_mask(cu, q.shape[0]) if backend == "flex" else None
        out = varlen_attention(
            q,
            k,
            v,
            cu,
            max(BLOCK_LENGTHS),
            backend=backend,
            scale=0.125,
            alibi_slopes=cuda_slopes,
            flex_mask=mask,
        )
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device
    tol = CUDA_TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), want.double(), atol=tol, rtol=tol)
