"""Variable-length (packed) self-attention behind one interface; the only module that imports flash_attn.

Packed layout: the B sequences of a batch are concatenated along the token axis, so q, k and v are
``(T, H, Dh)`` and ``cu_seqlens`` ``(B+1,) int32`` marks where each sequence starts. Every backend
computes bidirectional attention restricted to each sequence (no token attends across a sequence
boundary), optionally with a symmetric ALiBi bias ``-slope[h] * |i - j|``.

Backends, fastest first:

- ``flash-attn``: ``flash_attn_varlen_func`` (only when the ``flash_attn`` package imports; CUDA).
  Supports ALiBi slopes natively.
- ``torch-varlen``: torch's own varlen kernels (CUDA, torch >= 2.10): ``varlen_attn`` (FA2), and for
  batches of short sequences (longest <= `SHORT_SEQUENCE_TOKENS`) the memory-efficient (CUTLASS)
  varlen kernel, whose 64-row tiles waste less than FA2's 128-row ones there. No bias term, so it is
  not offered for ALiBi models.
- ``flex``: FlexAttention with a document mask built from ``cu_seqlens`` and an ALiBi ``score_mod``
  (CUDA). The kernel is compiled once per process.
- ``sdpa``: scatter to a padded ``(B, H, Lmax, Dh)`` batch, ``scaled_dot_product_attention`` with a
  key-padding mask (plus an additive ALiBi bias), gather back. Runs on CPU and GPU; memory grows with
  ``B * Lmax**2``, so it is the fallback and the CPU path.

``reference`` is not a kernel: it names a model's own padded "v1" forward. `resolve_backend` accepts
it and returns it unchanged; models handle it themselves.

Capabilities are detected once at import time.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F

from pipeline.core.errors import BackendUnavailableError, ConfigError

log = logging.getLogger(__name__)

try:  # optional CUDA extension
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func

    HAS_FLASH_ATTN = True
except Exception:  # ImportError, or a broken build raising at import (undefined CUDA symbols)
    _flash_attn_varlen_func = None
    HAS_FLASH_ATTN = False

# torch's varlen and flex modules import torch._dynamo (about 1.3 s), which CPU runs and spawned
# workers never need: detect them here, import them on first use.
HAS_TORCH_VARLEN = importlib.util.find_spec("torch.nn.attention.varlen") is not None
HAS_FLEX = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def _torch_varlen():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


@functools.cache
def _flex():
    """``(flex_attention, create_block_mask)``."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return flex_attention, create_block_mask


KERNEL_BACKENDS = ("flash-attn", "torch-varlen", "flex", "sdpa")
"""Real attention kernels, fastest first."""

REFERENCE = "reference"
AUTO = "auto"


_HALF_ONLY = ("flash-attn", "torch-varlen")  # flash kernels take fp16/bf16 only

#: Longest sequence (tokens) of a batch up to which ``torch-varlen`` runs the memory-efficient kernel.
#: Measured on an H200 with ESM-2 3B's heads (40 x 64) on 64K-token bf16 batches
#: (benchmarks/gpu/attention_device.py): 30-60 aa 0.65 ms against FA2's 1.30; 120-166 aa 1.36 vs 1.41;
#: 30-400 aa 1.88 vs 1.42. Reads of 150 bp give 50-residue frames (52 tokens). In the ESM-2 3B engine on
#: 30-60 aa: bf16 103,982 vs 101,426 tokens/s with FA2, fp8 123,490 vs 119,529 (docs/esm2.md).
SHORT_SEQUENCE_TOKENS = 64


def _unavailable_reason(
    backend: str, device: torch.device, alibi: bool, dtype: torch.dtype | None = None
) -> str | None:
    """Why ``backend`` cannot run on ``device`` (None when it can)."""
    cuda = device.type == "cuda"
    if backend in _HALF_ONLY and dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return f"{backend} computes in fp16/bf16 only, the model runs in {dtype}"
    if backend == "flash-attn":
        if not HAS_FLASH_ATTN:
            return "the flash_attn package is not installed (pip install flash-attn, needs nvcc)"
        if not cuda:
            return f"flash-attn needs a CUDA device, got {device}"
        return None
    if backend == "torch-varlen":
        if not HAS_TORCH_VARLEN:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs torch >= 2.10)"
        if not cuda:
            return f"torch varlen_attn runs on CUDA only, got {device}"
        if alibi:
            return "torch varlen_attn has no attention-bias input, so it cannot apply ALiBi"
        return None
    if backend == "flex":
        if not HAS_FLEX:
            return f"torch {torch.__version__} has no FlexAttention"
        if not cuda:
            return f"the compiled FlexAttention kernel is used on CUDA only, got {device}"
        return None
    if backend == "sdpa":
        return None
    raise ConfigError(
        f"unknown attention backend {backend!r}; use auto, reference or one of {', '.join(KERNEL_BACKENDS)}"
    )


def available_backends(
    device: torch.device | str, *, alibi: bool, dtype: torch.dtype | None = None
) -> list[str]:
    """Kernel backends that can run on ``device`` for a model with (``alibi=True``) or without ALiBi,
    fastest first. ``sdpa`` is always last and always present. ``dtype`` (the compute dtype, when
    known) drops the fp16/bf16-only kernels for fp32 models."""
    device = torch.device(device)
    return [b for b in KERNEL_BACKENDS if _unavailable_reason(b, device, alibi, dtype) is None]


def resolve_backend(
    requested: str, device: torch.device | str, *, alibi: bool = False, dtype: torch.dtype | None = None
) -> str:
    """Turn a user's backend choice into the backend that will run.

    ``auto`` -> the fastest available backend (logged); ``reference`` -> ``reference``; a named
    backend is returned when it can run and otherwise raises `BackendUnavailableError` immediately.
    ``dtype`` is the model's compute dtype when known (fp32 rules out the flash kernels).
    """
    device = torch.device(device)
    if requested == REFERENCE:
        return REFERENCE
    if requested == AUTO:
        chosen = available_backends(device, alibi=alibi, dtype=dtype)[0]
        log.info("attention backend auto -> %s (device %s, alibi=%s, dtype=%s)", chosen, device, alibi, dtype)
        return chosen
    reason = _unavailable_reason(requested, device, alibi, dtype)
    if reason is not None:
        options = ", ".join(available_backends(device, alibi=alibi, dtype=dtype))
        raise BackendUnavailableError(
            f"attention backend {requested!r} is not available: {reason}. "
            f"Available here: {options} (or 'auto' to pick the fastest)."
        )
    return requested


def sequence_index(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token sequence number and position within its sequence, without a host sync.

    Args:
        cu_seqlens: ``(B+1,) int32`` (any integer dtype) on the tokens' device.
        total: T, the number of packed tokens.
    Returns:
        ``(seq_id, pos)``, both ``(T,) int64``.
    """
    cu = cu_seqlens.to(torch.int64)
    tokens = torch.arange(total, device=cu.device)
    seq_id = torch.searchsorted(cu[1:], tokens, right=True)
    return seq_id, tokens - cu[seq_id]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ConfigError(
            f"q, k, v must all be (T, H, Dh); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ConfigError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    backend: str,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    flex_mask: object | None = None,
) -> torch.Tensor:
    """Bidirectional attention within each packed sequence.

    Args:
        q, k, v: ``(T, H, Dh)``, one dtype, on one device.
        cu_seqlens: ``(B+1,) int32`` on that device; ``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == T``.
        max_seqlen: longest sequence (host int).
        backend: a resolved kernel backend (see `resolve_backend`).
        scale: softmax scale applied to ``q @ k^T``.
        alibi_slopes: ``(H,) float32`` or None; adds ``-slope[h] * |i - j|`` within each sequence.
        flex_mask: optional `flex_block_mask` of this batch, built once per forward and shared by
            all layers (``flex`` only; other backends ignore it).
    Returns:
        ``(T, H, Dh)`` in q's dtype.
    """
    _check_qkv(q, k, v)
    if backend == "flash-attn":
        return _flash(q, k, v, cu_seqlens, max_seqlen, scale, alibi_slopes)
    if backend == "torch-varlen":
        if alibi_slopes is not None:
            raise BackendUnavailableError(
                "torch-varlen cannot apply ALiBi slopes; use flash-attn, flex or sdpa"
            )
        if max_seqlen <= SHORT_SEQUENCE_TOKENS:
            return efficient_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
        return _torch_varlen()(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    if backend == "flex":
        return flex_varlen(q, k, v, cu_seqlens, scale, alibi_slopes, compiled=True, block_mask=flex_mask)
    if backend == "sdpa":
        return sdpa_varlen(q, k, v, cu_seqlens, max_seqlen, scale, alibi_slopes)
    if backend == REFERENCE:
        raise ConfigError(
            "backend 'reference' is a model's padded forward, not an attention kernel; "
            "the model must handle it before calling varlen_attention"
        )
    raise ConfigError(f"unknown attention backend {backend!r}; use one of {', '.join(KERNEL_BACKENDS)}")


def _flash(q, k, v, cu_seqlens, max_seqlen, scale, alibi_slopes):
    if _flash_attn_varlen_func is None:
        raise BackendUnavailableError("flash-attn is not installed")
    slopes = None if alibi_slopes is None else alibi_slopes.to(device=q.device, dtype=torch.float32)
    return _flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        dropout_p=0.0,
        softmax_scale=scale,
        causal=False,
        alibi_slopes=slopes,
    )


def efficient_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """torch's memory-efficient (CUTLASS) attention over the packed batch, through its varlen entry
    (the kernel SDPA uses, called with ``cu_seqlens``): ``(T, H, Dh)`` -> ``(T, H, Dh)``; CUDA."""
    out = torch.ops.aten._efficient_attention_forward(
        q[None],
        k[None],
        v[None],
        None,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        0.0,
        0,
        False,
        scale=scale,
    )
    return out[0][0]


def sdpa_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Padded SDPA over the packed batch: ``(T, H, Dh)`` -> ``(T, H, Dh)``.

    Tokens are scattered into ``(B, Lmax)`` slots, keys beyond each sequence's length are masked,
    and the result is gathered back. B comes from ``cu_seqlens.numel()`` (no device sync).
    """
    total, heads, dim = q.shape
    batch = cu_seqlens.numel() - 1
    seq_id, pos = sequence_index(cu_seqlens, total)
    slot = seq_id * max_seqlen + pos  # (T,)

    def pad(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(batch * max_seqlen, heads, dim)
        out.index_copy_(0, slot, x)
        return out.view(batch, max_seqlen, heads, dim).transpose(1, 2)  # (B, H, L, Dh)

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)  # (B,)
    key_valid = torch.arange(max_seqlen, device=q.device)[None, :] < lengths[:, None]  # (B, L)
    if alibi_slopes is None:
        mask: torch.Tensor = key_valid[:, None, None, :]  # bool, broadcast over heads and queries
    else:
        idx = torch.arange(max_seqlen, device=q.device)
        distance = (idx[:, None] - idx[None, :]).abs().to(torch.float32)  # (L, L)
        bias = -alibi_slopes.to(device=q.device, dtype=torch.float32)[:, None, None] * distance  # (H, L, L)
        neg = torch.finfo(torch.float32).min
        mask = bias[None] + torch.where(key_valid, 0.0, neg)[:, None, None, :]  # (B, H, L, L)
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch * max_seqlen, heads, dim).index_select(0, slot)


@functools.cache
def _compiled_flex():
    return torch.compile(_flex()[0], dynamic=True)


def flex_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    *,
    compiled: bool = True,
    block_mask: object | None = None,
) -> torch.Tensor:
    """FlexAttention over the packed batch with a document mask: ``(T, H, Dh)`` -> ``(T, H, Dh)``.

    ``compiled=False`` runs FlexAttention's unfused eager path (slow; used to test the masks on CPU).
    ``block_mask`` (from `flex_block_mask` on the same ``cu_seqlens``) skips rebuilding the mask.
    """
    if not HAS_FLEX:
        raise BackendUnavailableError(f"torch {torch.__version__} has no FlexAttention")
    total = q.shape[0]
    seq_id, _ = sequence_index(cu_seqlens, total)

    def same_sequence(b, h, q_idx, kv_idx):
        return seq_id[q_idx] == seq_id[kv_idx]

    score_mod = None
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)

        # within one sequence |q_idx - kv_idx| equals the distance of in-sequence positions
        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

    if block_mask is None:
        block_mask = _flex()[1](same_sequence, None, None, total, total, device=q.device, _compile=compiled)
    fn = _compiled_flex() if compiled else _flex()[0]
    out = fn(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
    )
    return out[0].transpose(0, 1)


def flex_block_mask(cu_seqlens: torch.Tensor, total: int, *, compiled: bool = True) -> object:
    """The document block mask of a packed batch, to build once per forward and pass to every layer
    (`varlen_attention(..., flex_mask=...)`): mask construction costs O(T^2 / block^2) per call."""
    if not HAS_FLEX:
        raise BackendUnavailableError(f"torch {torch.__version__} has no FlexAttention")
    seq_id, _ = sequence_index(cu_seqlens, total)

    def same_sequence(b, h, q_idx, kv_idx):
        return seq_id[q_idx] == seq_id[kv_idx]

    return _flex()[1](same_sequence, None, None, total, total, device=cu_seqlens.device, _compile=compiled)


__all__ = [
    "HAS_FLASH_ATTN",
    "HAS_FLEX",
    "HAS_TORCH_VARLEN",
    "KERNEL_BACKENDS",
    "SHORT_SEQUENCE_TOKENS",
    "available_backends",
    "efficient_varlen",
    "flex_block_mask",
    "flex_varlen",
    "resolve_backend",
    "sdpa_varlen",
    "sequence_index",
    "varlen_attention",
]
