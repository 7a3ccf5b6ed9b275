"""Packed DNABERT-S (the DNABERT-2 / MosaicBERT architecture); loading lives in `checkpoint`.

Architecture, as in the checkpoint's remote code (``bert_layers.py``), in inference mode:

- embeddings: ``word_embeddings[id] + token_type_embeddings[0]`` -> LayerNorm. No position
  embeddings: position enters only through ALiBi.
- 12 post-LayerNorm blocks, each
  ``x = LN(dense(attn(Wqkv(x))) + x)`` then ``x = LN(wo(gelu(g) * u) + x)`` where
  ``[g, u] = gated_layers(x)`` (no bias; gelu is the exact erf form on the FIRST half).
- attention: fused ``Wqkv`` (q, k, v blocks of ``hidden`` rows each, heads contiguous inside a
  block), scale ``1/sqrt(head_dim)``, symmetric ALiBi bias ``-slope[h] * |i - j|`` with the
  standard slopes (non-power-of-two head counts take the closest power of two plus every other
  slope of the next power of two).
- output: the last block's hidden states; the original tool pools the mean over ALL tokens,
  ``[CLS]`` and ``[SEP]`` included.

Two forwards share the weights:

- `PackedDNABERTS.forward`: packed ``(T,)`` tokens, attention through `pipeline.models.attention`.
- `padded_reference_forward`: the padded fp32 math of the remote code's pure-PyTorch attention path
  (unpad -> per-layer pad for attention with ALiBi + ``-10000`` padding bias -> unpad), used by
  `PackedDNABERTS.embed_reference` (the "v1" path) and as the padded baseline in benchmarks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import ConfigError, ModelLoadError
from pipeline.models.attention import HAS_FLASH_ATTN, REFERENCE, flex_block_mask, varlen_attention
from pipeline.models.base import DTYPES, EncoderInfo, FiniteMonitor, PackedEncoder
from pipeline.models.dnabert_s.tokenizer import DNABERTTokenizer

log = logging.getLogger(__name__)

# Longest tokenized sequence accepted. The remote code has no hard limit (it rebuilds its ALiBi
# table when a longer input arrives and the tokenizer does not truncate), so neither do we in
# spirit; this bound only protects the padded paths, whose memory grows with length squared.
# 500 bp chunks tokenize to ~100-130 tokens.
MAX_TOKENS = 16384

# Checkpoint keys that are not part of the encoder and are skipped on purpose: the pooler
# (``pooler.dense``, a CLS projection the mean-pooled embedding never uses), the masked-LM head
# (``cls.predictions.*``) and non-weight buffers some exports include.
IGNORED_KEY_PREFIXES = ("pooler.", "cls.")
IGNORED_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})
BASE_PREFIX = "bert."  # checkpoints saved from BertForMaskedLM prefix every encoder key with it


# --------------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DNABERTArch:
    """The config.json fields the encoder depends on (names as in the checkpoint's config.json)."""

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    alibi_starting_size: int = 512

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ModelLoadError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; the config.json is not a DNABERT-S config"
            )
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ModelLoadError(f"config field {f.name}={getattr(self, f.name)} must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_config(cls, data: dict[str, Any], source: str = "config.json") -> DNABERTArch:
        required = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelLoadError(f"{source} lacks {', '.join(missing)}; it is not a DNABERT-S config.json")
        values = {f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None}
        try:
            values = {k: (float(v) if k == "layer_norm_eps" else int(v)) for k, v in values.items()}
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source} has a non-numeric architecture field ({exc})") from None
        return cls(**values)


RANDOM_ARCHS: dict[str, DNABERTArch] = {
    "dnabert-s": DNABERTArch(),
    # small enough for CPU tests in seconds; the vocabulary is still a trained BPE one
    "dnabert-s-tiny": DNABERTArch(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    ),
}


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes as MosaicBERT / DNABERT-2 compute them.

    For a power of two ``n``: ``2**(-8/n * (i+1))``. Otherwise the ``m`` slopes of the closest lower
    power of two ``m``, then the even-indexed slopes of ``2m`` for the remaining heads.
    """
    if n_heads <= 0:
        raise ConfigError(f"n_heads={n_heads} must be positive")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


# Module tree mirrors the checkpoint's names so state-dict keys match one to one
# (``embeddings.word_embeddings.weight``, ``encoder.layer.N.attention.self.Wqkv.weight``, ...).
class _Embeddings(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.token_type_embeddings = nn.Embedding(arch.type_vocab_size, arch.hidden_size)
        self.LayerNorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)


class _SelfAttention(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.Wqkv = nn.Linear(arch.hidden_size, 3 * arch.hidden_size)


class _SelfOutput(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.dense = nn.Linear(arch.hidden_size, arch.hidden_size)
        self.LayerNorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.self = _SelfAttention(arch)
        self.output = _SelfOutput(arch)


class _GatedMLP(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.gated_layers = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=False)
        self.wo = nn.Linear(arch.intermediate_size, arch.hidden_size)
        self.layernorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)


class _Layer(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.attention = _Attention(arch)
        self.mlp = _GatedMLP(arch)


class _Encoder(nn.Module):
    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(arch) for _ in range(arch.num_hidden_layers))


class DNABERTBackbone(nn.Module):
    """Parameter container with the checkpoint's key layout (no ``bert.`` prefix)."""

    def __init__(self, arch: DNABERTArch) -> None:
        super().__init__()
        self.embeddings = _Embeddings(arch)
        self.encoder = _Encoder(arch)


def _out_and_mlp(
    x: torch.Tensor,
    ctx: torch.Tensor,
    dense_w: torch.Tensor,
    dense_b: torch.Tensor,
    ln1_w: torch.Tensor,
    ln1_b: torch.Tensor,
    gated_w: torch.Tensor,
    wo_w: torch.Tensor,
    wo_b: torch.Tensor,
    ln2_w: torch.Tensor,
    ln2_b: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Attention output projection + post-LN, then the gated-GELU MLP + post-LN. ``(T, D)`` -> ``(T, D)``.

    Takes tensors rather than the layer module so one compiled graph serves every layer.
    """
    width = x.shape[-1]
    x = F.layer_norm(F.linear(ctx, dense_w, dense_b) + x, (width,), ln1_w, ln1_b, eps)
    gate, up = F.linear(x, gated_w).chunk(2, dim=-1)
    h = F.gelu(gate, approximate="none") * up
    return F.layer_norm(F.linear(h, wo_w, wo_b) + x, (width,), ln2_w, ln2_b, eps)


def _block_weights(layer: _Layer) -> tuple[torch.Tensor, ...]:
    out, mlp = layer.attention.output, layer.mlp
    return (
        out.dense.weight,
        out.dense.bias,
        out.LayerNorm.weight,
        out.LayerNorm.bias,
        mlp.gated_layers.weight,
        mlp.wo.weight,
        mlp.wo.bias,
        mlp.layernorm.weight,
        mlp.layernorm.bias,
    )


# --------------------------------------------------------------------------------------------
# packed encoder
# --------------------------------------------------------------------------------------------


class PackedDNABERTS(PackedEncoder):
    """DNABERT-S over packed sequences; see the module docstring for the math.

    Attributes:
        arch: architecture fields from config.json.
        bert: the weights (`DNABERTBackbone`).
        alibi_slopes: ``(H,) float32`` buffer.
        backend: resolved attention backend (``reference`` runs the padded forward instead).
    """

    def __init__(
        self, arch: DNABERTArch, tokenizer: DNABERTTokenizer, info: EncoderInfo, backend: str = "sdpa"
    ) -> None:
        super().__init__()
        self.arch = arch
        self.bert = DNABERTBackbone(arch)
        self.register_buffer(
            "alibi_slopes", torch.empty(arch.num_attention_heads, dtype=torch.float32), persistent=False
        )
        self.tokenizer = tokenizer
        self.info = info
        self.backend = backend
        self._block = _out_and_mlp
        self._finite = FiniteMonitor("DNABERT-S", "cpu")

    def reset_alibi(self) -> None:
        """(Re)fill the ALiBi slopes in fp32 (after `to_empty` or a dtype cast touched the buffer)."""
        self.alibi_slopes = torch.tensor(
            alibi_slopes(self.arch.num_attention_heads), dtype=torch.float32, device=self.alibi_slopes.device
        )

    def enable_compile(self) -> None:
        """Compile the dense part of each block (projection, LayerNorms, gated MLP) with dynamic shapes."""
        self._block = torch.compile(_out_and_mlp, dynamic=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.bert.embeddings.word_embeddings.weight.dtype

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(...,) int64`` ids -> ``(..., D)``: word + token-type-0 embedding, LayerNorm."""
        emb = self.bert.embeddings
        x = emb.word_embeddings(input_ids) + emb.token_type_embeddings.weight[0]
        return emb.LayerNorm(x)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Packed forward.

        Args:
            input_ids: ``(T,) int64`` ids of B sequences back to back, [CLS]/[SEP] included.
            cu_seqlens: ``(B+1,) int32`` sequence starts, on the model's device.
            max_seqlen: longest sequence (host int).
        Returns:
            ``(T, D)`` last-layer hidden states in the model dtype.
        """
        if self.backend == REFERENCE:
            return self._reference_packed(input_ids, cu_seqlens, max_seqlen)
        arch = self.arch
        total = input_ids.shape[0]
        heads, head_dim = arch.num_attention_heads, arch.head_dim
        scale = 1.0 / math.sqrt(head_dim)
        slopes = self.alibi_slopes.float()
        # the flex document mask depends only on cu_seqlens: build it once for all layers
        flex_mask = flex_block_mask(cu_seqlens, total) if self.backend == "flex" else None
        x = self.embed_tokens(input_ids)
        for layer in self.bert.encoder.layer:
            qkv = layer.attention.self.Wqkv(x).view(total, 3, heads, head_dim)
            q, k, v = qkv.unbind(1)
            ctx = varlen_attention(
                q,
                k,
                v,
                cu_seqlens,
                max_seqlen,
                backend=self.backend,
                scale=scale,
                alibi_slopes=slopes,
                flex_mask=flex_mask,
            )
            x = self._block(
                x, ctx.reshape(total, arch.hidden_size), *_block_weights(layer), arch.layer_norm_eps
            )
        return x

    def pool(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Mean over every token of each sequence, [CLS] and [SEP] included.

        ``(T, D)`` + ``(B+1,) int32`` -> ``(B, D) float32`` (accumulated in fp32, no host sync).
        NaN/Inf is noted in a device-side flag; `check_finite` reports it.
        """
        pooled = segment_mean(hidden, cu_seqlens)
        self._finite.note(pooled)
        return pooled

    def check_finite(self, context: str) -> None:
        """Synchronise once; raise `NumericalError` if any batch pooled since the last call had NaN/Inf."""
        self._finite.check(context, precision=_precision_name(self.dtype), backend=self.backend)

    def _reference_packed(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
    ) -> torch.Tensor:
        """The padded forward in the model dtype, taking and returning the packed layout."""
        ids, mask = pad_packed(input_ids, cu_seqlens, max_seqlen, self.tokenizer.pad_id)
        hidden = padded_reference_forward(
            dict(self.bert.state_dict()), self.arch, ids, mask, dtype=self.dtype
        )
        return hidden[mask.bool()]

    @torch.inference_mode()
    def embed_reference(self, sequences: list[str], batch_size: int = 64) -> torch.Tensor:
        """The "v1" path: padded fp32 batches through `padded_reference_forward`.

        Weights are the model's own upcast to fp32. Returns ``(B, D) float32`` pooled like `pool`.
        """
        device = self.bert.embeddings.word_embeddings.weight.device
        params = {k: v.detach().float() for k, v in self.bert.state_dict().items()}
        out = []
        for start in range(0, len(sequences), batch_size):
            encoded = self.tokenizer.encode_batch(list(sequences[start : start + batch_size]))
            ids, mask = pad_batch(encoded, self.tokenizer.pad_id, device)
            hidden = padded_reference_forward(params, self.arch, ids, mask, dtype=torch.float32)
            out.append(masked_mean(hidden, mask))
        if not out:
            return torch.zeros(0, self.arch.hidden_size, dtype=torch.float32, device=device)
        return torch.cat(out)


def default_attention(requested: str, device: torch.device, *, compile: bool) -> str:
    """The backend to ask for: ``auto`` on CUDA without flash-attn means padded SDPA unless the
    model is compiled anyway. FlexAttention (the other ALiBi-capable kernel) compiles on first use
    in every process (~35 s on an H200 with the GPU idle, measured 2026-11-30), while padded SDPA
    with the ALiBi bias over length-sorted batches ran 0.93M tokens/s without compiling."""
    if requested == "auto" and torch.device(device).type == "cuda" and not compile and not HAS_FLASH_ATTN:
        return "sdpa"
    return requested


# --------------------------------------------------------------------------------------------
# pure helpers: pooling, padding, the reference forward
# --------------------------------------------------------------------------------------------


def _precision_name(dtype: torch.dtype) -> str:
    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype))  # bf16, not fp8


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean of packed rows. ``(T, D)`` + ``(B+1,)`` -> ``(B, D) float32``."""
    total = hidden.shape[0]
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.int64)
    lengths = cu[1:] - cu[:-1]
    seq_id = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=hidden.device), lengths, output_size=total
    )
    sums = torch.zeros(lengths.numel(), hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, seq_id, hidden.float())
    return sums / lengths.clamp(min=1).unsqueeze(1).float()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, S, D)`` + ``(B, S)`` 0/1 mask -> ``(B, D) float32`` mean over the real tokens."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


def pad_batch(encoded: list, pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id arrays -> ``(B, S) int64`` ids right-padded with ``pad_id`` and ``(B, S) int64`` mask."""
    lengths = [len(e) for e in encoded]
    width = max(lengths, default=0)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(encoded), width), dtype=torch.int64)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.as_tensor(e, dtype=torch.int64)
        mask[row, : len(e)] = 1
    return ids.to(device), mask.to(device)


def pad_packed(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``(T,)`` ids -> ``(B, max_seqlen)`` padded ids and 0/1 mask (int64), no host sync."""
    cu = cu_seqlens.to(device=input_ids.device, dtype=torch.int64)
    batch = cu.numel() - 1
    lengths = cu[1:] - cu[:-1]
    pos = torch.arange(max_seqlen, device=input_ids.device)
    mask = (pos[None, :] < lengths[:, None]).to(torch.int64)
    ids = torch.full((batch, max_seqlen), pad_id, dtype=torch.int64, device=input_ids.device)
    ids[mask.bool()] = input_ids
    return ids, mask


def alibi_bias(n_heads: int, size: int, device: torch.device | str) -> torch.Tensor:
    """``(H, S, S) float32`` symmetric ALiBi bias ``-slope[h] * |i - j|``."""
    pos = torch.arange(size, device=device)
    distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)
    return -slopes[:, None, None] * distance


def padded_reference_forward(
    params: dict[str, torch.Tensor],
    arch: DNABERTArch,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The remote code's pure-PyTorch forward on a padded batch, written against the checkpoint keys.

    Tokens are unpadded after the embeddings; every layer projects the unpadded tokens, pads q/k/v
    for an explicit ``softmax(q k^T * scale + alibi + (1 - mask) * -10000) v`` and unpads again;
    the final hidden states are padded back with zeros.

    Args:
        params: state dict with checkpoint key names (no ``bert.`` prefix), any dtype.
        arch: the architecture.
        input_ids: ``(B, S) int64``.
        attention_mask: ``(B, S)`` 1 for real tokens, 0 for padding.
        dtype: compute dtype (fp32 for the "v1" reference).
    Returns:
        ``(B, S, D)`` in ``dtype``; padded positions are zero.
    """
    p = {k: v.to(dtype) if v.is_floating_point() else v for k, v in params.items()}
    batch, seqlen = input_ids.shape
    heads, head_dim, hidden = arch.num_attention_heads, arch.head_dim, arch.hidden_size
    eps = arch.layer_norm_eps
    keep = attention_mask.reshape(-1).bool()
    indices = torch.nonzero(keep, as_tuple=False).flatten()

    emb = F.embedding(input_ids, p["embeddings.word_embeddings.weight"])
    emb = emb + p["embeddings.token_type_embeddings.weight"][0]
    emb = F.layer_norm(emb, (hidden,), p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], eps)
    x = emb.reshape(batch * seqlen, hidden)[indices]  # (nnz, D)

    pad_bias = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * -10000.0  # (B, 1, 1, S)
    bias = (alibi_bias(heads, seqlen, input_ids.device)[None] + pad_bias).to(dtype)  # (B, H, S, S)
    scale = 1.0 / math.sqrt(head_dim)

    for i in range(arch.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        qkv_flat = F.linear(x, p[pre + "attention.self.Wqkv.weight"], p[pre + "attention.self.Wqkv.bias"])
        qkv = qkv_flat.new_zeros(batch * seqlen, 3 * hidden)
        qkv[indices] = qkv_flat
        qkv = qkv.view(batch, seqlen, 3, heads, head_dim)
        q = qkv[:, :, 0].permute(0, 2, 1, 3)  # (B, H, S, Dh)
        k = qkv[:, :, 1].permute(0, 2, 3, 1)  # (B, H, Dh, S)
        v = qkv[:, :, 2].permute(0, 2, 1, 3)
        scores = torch.matmul(q, k) * scale + bias
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(batch * seqlen, hidden)[indices]
        attn = F.linear(ctx, p[pre + "attention.output.dense.weight"], p[pre + "attention.output.dense.bias"])
        x = F.layer_norm(
            attn + x,
            (hidden,),
            p[pre + "attention.output.LayerNorm.weight"],
            p[pre + "attention.output.LayerNorm.bias"],
            eps,
        )
        gated = F.linear(x, p[pre + "mlp.gated_layers.weight"])
        inter = arch.intermediate_size
        h = F.gelu(gated[:, :inter], approximate="none") * gated[:, inter:]
        h = F.linear(h, p[pre + "mlp.wo.weight"], p[pre + "mlp.wo.bias"])
        x = F.layer_norm(
            h + x, (hidden,), p[pre + "mlp.layernorm.weight"], p[pre + "mlp.layernorm.bias"], eps
        )

    out = x.new_zeros(batch * seqlen, hidden)
    out[indices] = x
    return out.view(batch, seqlen, hidden)


__all__ = [
    "DNABERTArch",
    "DNABERTBackbone",
    "IGNORED_KEYS",
    "IGNORED_KEY_PREFIXES",
    "MAX_TOKENS",
    "PackedDNABERTS",
    "RANDOM_ARCHS",
    "alibi_bias",
    "alibi_slopes",
    "masked_mean",
    "pad_batch",
    "pad_packed",
    "padded_reference_forward",
    "segment_mean",
]
