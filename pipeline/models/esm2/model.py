"""Packed ESM-2 over fair-esm weights (the architecture only: tokenizer and loading live beside it).

The packed forward reproduces fair-esm's ``ESM2.forward`` for inputs without mask tokens:

- token embedding times the constant token-dropout rescale ``(1 - 0.15 * 0.8) / (1 - 0) = 0.88``
  (fair-esm divides by the observed mask ratio, which is 0 at inference), only when the checkpoint
  was trained with token dropout;
- pre-LayerNorm transformer layers, rotary position embeddings computed in fp32 with positions
  restarting at 0 for every packed sequence, attention through `pipeline.models.attention`, erf-GELU
  (on CUDA in fp16/bf16 fc1's bias and GELU run in the matmul epilogue: cuBLASLt's tanh GELU);
- ``emb_layer_norm_after`` on the last layer's output.

``--precision fp8`` computes in bf16 with the MLP's Linear weights in FP8 (torchao, row-wise scales;
`pipeline.models.fp8`), on GPUs with FP8 tensor cores only. docs/esm2.md lists every technique of
this engine with its measured gain.

Pooling follows the original VirNucPro ``extract_esm``: the mean over residue positions only (BOS and
EOS excluded), over at most the first 1024 residues (its ``truncation_seq_length=1024`` slice). The
sequence itself is not truncated: the original fed the whole protein to the model.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError, InputError, ModelLoadError
from pipeline.models.attention import (
    REFERENCE,
    flex_block_mask,
    resolve_backend,
    sequence_index,
    varlen_attention,
)
from pipeline.models.base import DTYPES, EncoderInfo, FiniteMonitor, PackedEncoder
from pipeline.models.esm2.tokenizer import ESM2Tokenizer
from pipeline.models.fp8 import check_fp8, quantize_weight

log = logging.getLogger(__name__)

TOKEN_DROPOUT_SCALE = 1.0 - 0.15 * 0.8  # fair-esm's mask_ratio_train; no masks observed at inference
POOL_MAX_RESIDUES = 1024  # the original tool averages representations[i, 1 : min(1024, L) + 1]
TRAINED_MAX_TOKENS = 1024  # ESM-2 was trained on crops of 1022 residues + BOS + EOS

#: Position of each Linear weight in a layer's parameter tuple (see `packed_layer`).
LINEAR_SLOTS = {"qkv": 2, "out": 4, "fc1": 8, "fc2": 10}
#: The Linear layers that run in FP8 under ``--precision fp8``: the MLP only. Measured on ESM-2 3B, 2,000
#: sequences (docs/esm2.md): MLP only 117.7K tokens/s at pooled cosine to fp32 mean 0.99968 / min 0.99961;
#: adding out_proj 119.6K at mean 0.9980; every Linear 136K at mean 0.9963 - both under the 0.999 goal.
FP8_TARGETS: tuple[str, ...] = ("fc1", "fc2")
#: Attention backends with which ``fp8`` compiles the layer by default: where it was measured on an H200.
#: With flex (never compiled here) and sdpa fp8 runs eager: flex-fp8 passed the GPU value tests that
#: way, while the compiled sdpa-fp8 case failed there (tests/models/test_packed_values.py).
FP8_COMPILED_BACKENDS = ("torch-varlen", "flash-attn")


# --------------------------------------------------------------------------------------------------
# packed-input checks


def check_packed_inputs(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> None:
    """Validate a packed batch; raises `InputError` naming the problem.

    Shape and dtype checks never sync. Value checks (starts at 0, increasing, ends at T,
    ``max_seqlen`` large enough) run only when ``cu_seqlens`` is on the CPU, which is where a runner
    builds it, so they cost no device synchronisation.
    """
    if input_ids.dim() != 1 or input_ids.dtype != torch.int64:
        raise InputError(
            f"input_ids must be a (T,) int64 tensor, got shape {tuple(input_ids.shape)} {input_ids.dtype}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32:
        raise InputError(
            f"cu_seqlens must be a (B+1,) int32 tensor, got shape {tuple(cu_seqlens.shape)} "
            f"{cu_seqlens.dtype}; build it with dtype=torch.int32"
        )
    total = input_ids.numel()
    if cu_seqlens.numel() < 2 or total == 0:
        raise InputError(
            "empty batch: no sequences to embed (cu_seqlens has fewer than 2 entries or no tokens); "
            "skip empty batches before calling the model"
        )
    if cu_seqlens.device.type != "cpu":
        return
    cu = cu_seqlens.tolist()
    if cu[0] != 0:
        raise InputError(f"cu_seqlens must start at 0, got {cu[0]}")
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    if min(lengths) <= 0:
        i = next(i for i, n in enumerate(lengths) if n <= 0)
        raise InputError(
            f"cu_seqlens must be strictly increasing; sequence {i} has length {lengths[i]} "
            f"(cu_seqlens[{i}]={cu[i]}, cu_seqlens[{i + 1}]={cu[i + 1]})"
        )
    if cu[-1] != total:
        raise InputError(f"cu_seqlens[-1]={cu[-1]} must equal the number of packed tokens T={total}")
    if max(lengths) > max_seqlen:
        raise InputError(
            f"max_seqlen={max_seqlen} is smaller than the longest sequence ({max(lengths)} tokens)"
        )


# --------------------------------------------------------------------------------------------------
# the packed layer: a pure function of tensors so one compiled graph serves every layer


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def packed_layer(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    params: tuple[torch.Tensor, ...],
    heads: int,
    eps: float,
    backend: str,
    flex_mask: object | None = None,
    gelu_epilogue: bool = False,
) -> torch.Tensor:
    """One ESM-2 transformer layer on packed tokens.

    Args:
        x: ``(T, D)`` compute dtype.
        cos, sin: ``(T, 1, Dh)`` float32 rotary tables at each token's in-sequence position.
        cu_seqlens: ``(B+1,) int32``; max_seqlen: host int.
        params: ``(ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b)``;
            Linear weights may be FP8 tensors (`pipeline.models.fp8.quantize_weight`).
        flex_mask: the batch's FlexAttention block mask (``flex`` backend only).
        gelu_epilogue: run fc1's bias and GELU in the matmul's epilogue (cuBLASLt,
            ``torch._addmm_activation``), which saves a read and a write of the ``(T, 4D)`` activation.
            cuBLASLt's GELU is the tanh approximation of fair-esm's erf GELU (max difference 5e-4;
            no measurable change of the pooled embeddings in fp16/bf16, docs/esm2.md).
    Returns:
        ``(T, D)`` compute dtype.
    """
    ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = params
    total, dim = x.shape
    head_dim = dim // heads
    h = F.layer_norm(x, (dim,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(total, 3, heads, head_dim).unbind(1)
    q = _rotary(q, cos, sin)
    k = _rotary(k, cos, sin)
    # fair-esm scales q before the rotation; rotation is linear, so scaling inside the kernel is the same
    o = varlen_attention(
        q,
        k,
        v.contiguous(),
        cu_seqlens,
        max_seqlen,
        backend=backend,
        scale=head_dim**-0.5,
        flex_mask=flex_mask,
    )
    x = x + F.linear(o.reshape(total, dim), out_w, out_b)
    h = F.layer_norm(x, (dim,), ln2_w, ln2_b, eps)
    if gelu_epilogue:
        h = torch._addmm_activation(fc1_b, h, fc1_w.t(), use_gelu=True)
    else:
        h = F.gelu(F.linear(h, fc1_w, fc1_b))  # exact erf GELU, as fair-esm
    return x + F.linear(h, fc2_w, fc2_b)


def _quantize_params(params: tuple[torch.Tensor, ...], targets: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """A layer's parameter tuple with the ``targets`` Linear weights in FP8 (biases stay bf16)."""
    out = list(params)
    for name in targets:
        out[LINEAR_SLOTS[name]] = quantize_weight(out[LINEAR_SLOTS[name]])
    return tuple(out)


def _mark_dynamic(*tensors: torch.Tensor) -> None:
    """Compile dim 0 (tokens, or sequences for ``cu_seqlens``) as a symbolic size from the first call,
    so batches of any size share one graph without a recompilation."""
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def rotary_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(T, 1, Dh)`` cos/sin for integer ``positions`` (T,), as fair-esm's RotaryEmbedding."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


# --------------------------------------------------------------------------------------------------
# the model


class PackedESM2(PackedEncoder):
    """ESM-2 over packed variable-length batches, holding a fair-esm ``ESM2`` module for its weights.

    Attributes:
        esm: the fair-esm module (cast to the compute dtype); also runs the ``reference`` backend.
        backend: resolved attention backend.
        dtype: compute dtype.
        info: `EncoderInfo`.
        tokenizer: `ESM2Tokenizer`.

    The planner may fill batches up to `best_token_budget` tokens when memory allows: measured on an
    H200, 64K-token batches ran ESM-2 3B 1.3 % faster than 32K and 128K no faster (docs/esm2.md).

    NaN/Inf: `pool` records non-finite embeddings in a device-side flag without synchronising;
    the runner calls `check_finite` once per output part (before writing it), which synchronises once
    and raises `NumericalError` naming the first bad batch.
    """

    best_token_budget = 65536

    def __init__(
        self,
        esm: torch.nn.Module,
        *,
        spec: str,
        precision: str = "fp32",
        backend: str = "auto",
        compile: bool = False,
        compile_backend: Any = "inductor",
        fp8_targets: tuple[str, ...] = FP8_TARGETS,
        gelu_epilogue: bool | None = None,
    ) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise ConfigError(f"precision={precision!r} is not one of {', '.join(DTYPES)}")
        unknown = sorted(set(fp8_targets) - set(LINEAR_SLOTS))
        if unknown:
            raise ConfigError(
                f"fp8_targets {unknown} are not Linear layers of ESM-2; use {', '.join(LINEAR_SLOTS)}"
            )
        device = next(esm.parameters()).device
        if precision == "fp8":
            check_fp8(device)  # before any weight is touched: a clear error on CPU and pre-Ada GPUs
        self.dtype = DTYPES[precision]
        self.precision = precision
        self.esm = esm.to(self.dtype).eval().requires_grad_(False)
        self.num_layers = esm.num_layers
        self.embed_dim = esm.embed_dim
        self.heads = esm.attention_heads
        if self.embed_dim % self.heads:
            raise ModelLoadError(
                f"embed_dim={self.embed_dim} is not divisible by attention_heads={self.heads}"
            )
        self.head_dim = self.embed_dim // self.heads
        self.embed_scale = TOKEN_DROPOUT_SCALE if esm.token_dropout else 1.0
        self.backend = resolve_backend(backend, device, alibi=False, dtype=self.dtype)
        self.tokenizer = ESM2Tokenizer.from_alphabet(esm.alphabet)
        params = sum(p.numel() for p in {id(p): p for p in self.esm.parameters()}.values())
        self.info = EncoderInfo(
            kind="esm2",
            spec=spec,
            hidden_size=self.embed_dim,
            num_layers=self.num_layers,
            repr_layer=self.num_layers,
            max_tokens=TRAINED_MAX_TOKENS,
            params=params,
        )
        self._layer_params = self._fuse_qkv()
        self.fp8_targets = tuple(fp8_targets) if precision == "fp8" else ()
        if self.fp8_targets:
            self._layer_params = [_quantize_params(p, self.fp8_targets) for p in self._layer_params]
        if gelu_epilogue is None:  # cuBLASLt epilogues: CUDA half precision only, not on FP8 weights
            gelu_epilogue = device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
        self.gelu_epilogue = bool(gelu_epilogue) and "fc1" not in self.fp8_targets
        self._layer_eps = [float(layer.self_attn_layer_norm.eps) for layer in self.esm.layers]
        self._reference_fp32: torch.nn.Module | None = None
        self._finite = FiniteMonitor("ESM-2", device)
        self.compiled = False
        self._layer_fn = packed_layer
        self._graphs_seen = 0
        if compile:
            self.enable_compile(compile_backend)

    def enable_compile(self, compile_backend: Any = "inductor") -> None:
        """Wrap the per-layer function in ``torch.compile``: one graph for every layer and batch shape;
        the attention backend call stays inside it (a custom op for torch-varlen).

        Only the token and sequence counts are dynamic (`_mark_dynamic`); heads, widths and eps stay
        constants of the graph. ``dynamic=True`` made every int and width symbolic, which cost 9 %
        on ESM-2 3B (docs/esm2.md). ``max_seqlen`` turns dynamic after its first change (one
        recompilation, then none)."""
        if self.backend == REFERENCE:
            log.info("torch.compile skipped: backend 'reference' runs fair-esm's own forward")
            return
        if self.backend == "flex":
            log.info("torch.compile of the layer skipped: the flex backend already runs a compiled kernel")
            return
        if self.backend == "sdpa" and self.device.type == "cuda":
            # On CUDA sdpa is only the fallback for a missing flash kernel, and inductor (torch 2.11)
            # cannot lower its padded layer there (InductorError: SliceView, seen on an H200).
            log.info("torch.compile of the layer skipped: the padded sdpa fallback runs eager on CUDA")
            return
        self._layer_fn = torch.compile(packed_layer, backend=compile_backend)
        self.compiled = True

    def disable_compile(self) -> None:
        self._layer_fn = packed_layer
        self.compiled = False

    # -- weights -----------------------------------------------------------------------------------

    def _fuse_qkv(self) -> list[tuple[torch.Tensor, ...]]:
        """One (3D, D) projection per layer; fair-esm's q/k/v weights become views of it (no extra memory)."""
        out = []
        for layer in self.esm.layers:
            attn = layer.self_attn
            w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
            b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach()
            d = self.embed_dim
            for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
                proj.weight = torch.nn.Parameter(w[i * d : (i + 1) * d], requires_grad=False)
                proj.bias = torch.nn.Parameter(b[i * d : (i + 1) * d], requires_grad=False)
            out.append(
                (
                    layer.self_attn_layer_norm.weight,
                    layer.self_attn_layer_norm.bias,
                    w,
                    b,
                    attn.out_proj.weight,
                    attn.out_proj.bias,
                    layer.final_layer_norm.weight,
                    layer.final_layer_norm.bias,
                    layer.fc1.weight,
                    layer.fc1.bias,
                    layer.fc2.weight,
                    layer.fc2.bias,
                )
            )
        return out

    @property
    def device(self) -> torch.device:
        return self.esm.embed_tokens.weight.device

    # -- packed forward ----------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Packed forward.

        Args:
            input_ids: ``(T,) int64`` token ids, BOS/EOS included.
            cu_seqlens: ``(B+1,) int32``. Pass it on the CPU to get value checks without a device sync;
                it is moved to the model's device here.
            max_seqlen: longest sequence in tokens (host int).
        Returns:
            ``(T, D)`` compute dtype: final-layer representation after ``emb_layer_norm_after``.
        """
        check_packed_inputs(input_ids, cu_seqlens, max_seqlen)
        device = self.device
        input_ids = input_ids.to(device, non_blocking=True)
        cu_seqlens = cu_seqlens.to(device, non_blocking=True)
        if self.backend == REFERENCE:
            return self._reference_packed(input_ids, cu_seqlens, max_seqlen)
        total = input_ids.numel()
        _, positions = sequence_index(cu_seqlens, total)
        cos, sin = rotary_tables(positions, self.head_dim)
        flex_mask = flex_block_mask(cu_seqlens, total) if self.backend == "flex" else None
        x = self.esm.embed_tokens(input_ids) * self.embed_scale
        if self.compiled:
            _mark_dynamic(x, cos, sin, cu_seqlens)
        for params, eps in zip(self._layer_params, self._layer_eps):
            x = self._layer_fn(
                x,
                cos,
                sin,
                cu_seqlens,
                max_seqlen,
                params,
                self.heads,
                eps,
                self.backend,
                flex_mask,
                self.gelu_epilogue,
            )
        if self.compiled:
            self._log_compile_stats()
        return self.esm.emb_layer_norm_after(x)

    def _reference_packed(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
    ) -> torch.Tensor:
        """fair-esm's own padded forward (compute dtype) on the unpacked batch, re-packed to ``(T, D)``."""
        total = input_ids.numel()
        batch = cu_seqlens.numel() - 1
        seq_id, pos = sequence_index(cu_seqlens, total)
        slot = seq_id * max_seqlen + pos
        padded = torch.full(
            (batch * max_seqlen,), self.esm.padding_idx, dtype=torch.int64, device=input_ids.device
        )
        padded[slot] = input_ids
        rep = self.esm(padded.view(batch, max_seqlen), repr_layers=[self.num_layers])["representations"]
        return rep[self.num_layers].reshape(batch * max_seqlen, -1)[slot]

    # -- pooling and NaN/Inf detection -------------------------------------------------------------

    def pool(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """``(T, D)`` + ``(B+1,) int32`` -> ``(B, D) float32``: mean over residues (BOS/EOS excluded,
        at most the first 1024 residues), computed with one segment sum (no per-sequence loop)."""
        cu_seqlens = cu_seqlens.to(hidden.device, non_blocking=True)
        total = hidden.shape[0]
        batch = cu_seqlens.numel() - 1
        seq_id, pos = sequence_index(cu_seqlens, total)
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
        residues = (lengths - 2).clamp(min=0, max=POOL_MAX_RESIDUES)  # (B,)
        keep = (pos >= 1) & (pos <= residues[seq_id])
        weights = keep.to(torch.float32)[:, None]
        sums = torch.zeros(batch, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, seq_id, hidden.float() * weights)
        pooled = sums / residues.clamp(min=1).to(torch.float32)[:, None]
        self._finite.note(pooled)
        return pooled

    def check_finite(self, context: str) -> None:
        """Synchronise once; raise `NumericalError` if any batch pooled since the last call had NaN/Inf.
        ``context`` names the unit checked (e.g. ``"shard-003 part 12"``)."""
        self._finite.check(context, precision=self.precision, backend=self.backend)

    # -- compile bookkeeping -----------------------------------------------------------------------

    def compile_stats(self) -> dict[str, int]:
        """torch._dynamo counters: graphs compiled and recompilations (process-wide)."""
        from torch._dynamo.utils import counters

        graphs = int(counters["stats"].get("unique_graphs", 0))
        return {
            "unique_graphs": graphs,
            "recompiles": max(graphs - 1, 0),
            "calls_captured": int(counters["stats"].get("calls_captured", 0)),
        }

    def _log_compile_stats(self) -> None:
        graphs = self.compile_stats()["unique_graphs"]
        if graphs != self._graphs_seen:
            self._graphs_seen = graphs
            log.info(
                "torch.compile of the ESM-2 layer: %d graph(s) compiled so far (recompilations: %d)",
                graphs,
                max(graphs - 1, 0),
            )

    # -- reference (v1) path -----------------------------------------------------------------------

    def reference_module(self) -> torch.nn.Module:
        """The fair-esm module in fp32 (a cached upcast copy when the compute dtype is lower; its
        weights then carry the compute dtype's rounding)."""
        if self.dtype == torch.float32:
            return self.esm
        if self._reference_fp32 is None:
            ref = copy.deepcopy(self.esm).float()
            for layer in ref.layers:  # .half() rounded the rotary inverse frequencies; rebuild them in fp32
                rot = layer.self_attn.rot_emb
                rot.inv_freq = 1.0 / (
                    10000
                    ** (torch.arange(0, self.head_dim, 2, device=rot.inv_freq.device).float() / self.head_dim)
                )
                rot._seq_len_cached = None
            self._reference_fp32 = ref
        return self._reference_fp32

    @torch.inference_mode()
    def embed_reference(self, sequences: list[str], batch_size: int = 8) -> torch.Tensor:
        """The "v1" path: fair-esm's ``ESM2.forward`` on padded fp32 batches (fair-esm's batch converter,
        pad id 1), pooled like `pool`. Returns ``(B, D) float32`` on the model's device."""
        if not sequences:
            raise InputError("embed_reference got no sequences")
        for seq in sequences:  # same validation (and error) as the packed path
            self.tokenizer.encode(seq)
        model = self.reference_module()
        converter = model.alphabet.get_batch_converter()
        out = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            _, _, tokens = converter([(str(i), s) for i, s in enumerate(chunk)])
            rep = model(tokens.to(self.device), repr_layers=[self.num_layers])["representations"][
                self.num_layers
            ]
            for i, seq in enumerate(chunk):
                n = min(len(seq), POOL_MAX_RESIDUES)
                out.append(rep[i, 1 : n + 1].float().mean(0))
        return torch.stack(out)


__all__ = [
    "POOL_MAX_RESIDUES",
    "TOKEN_DROPOUT_SCALE",
    "PackedESM2",
    "check_packed_inputs",
    "packed_layer",
    "rotary_tables",
]
