"""The contract every embedding model (ESM-2, DNABERT-S) fulfils, so one runner serves both.

A model is split in two parts because they live in different processes:
- a `Tokenizer` (pure CPU, picklable) that DataLoader workers use to turn a sequence string into
  token ids, special tokens included;
- a `PackedEncoder` (a torch module on the compute device) that runs the packed forward and pools.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pipeline.core.errors import NumericalError

ModelKind = Literal["esm2", "dnabert-s"]

#: ``--precision`` name -> compute dtype. ``fp8`` computes in bf16: ESM-2 runs its MLP matmuls in FP8
#: (`pipeline.models.fp8`), DNABERT-S runs in bf16.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


class Tokenizer(abc.ABC):
    """Picklable sequence -> token-id encoder (used inside spawned DataLoader workers)."""

    #: True when `encode_batch` already spreads over every core (a Rust fast tokenizer): then
    #: tokenizer worker processes only add their start-up cost and compete for the same cores.
    parallel_batch: bool = False

    @abc.abstractmethod
    def encode(self, sequence: str) -> np.ndarray:
        """Return ``(L,) int64`` token ids of one sequence, special tokens (BOS/CLS, EOS/SEP) included."""

    def encode_batch(self, sequences: list[str]) -> list[np.ndarray]:
        return [self.encode(s) for s in sequences]

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Id used to pad in the padded (reference) paths."""


@dataclass(frozen=True)
class EncoderInfo:
    """What gets recorded in output metadata and metric rows."""

    kind: ModelKind
    spec: str  # the specifier the user gave
    hidden_size: int  # D of the pooled embedding
    num_layers: int
    repr_layer: int  # which layer's output is pooled (the last one)
    max_tokens: int  # longest tokenized sequence the model accepts (specials included)
    params: int  # number of parameters


class PackedEncoder(torch.nn.Module, abc.ABC):
    """Packed variable-length transformer over concatenated sequences.

    Subclasses set ``self.info: EncoderInfo``, ``self.backend: str`` (the resolved attention
    backend, after ``auto``) and ``self.tokenizer: Tokenizer``.
    """

    info: EncoderInfo
    backend: str
    tokenizer: Tokenizer
    #: Largest packed batch (tokens) worth planning on an accelerator, when measured for this model;
    #: None leaves the planner's default cap.
    best_token_budget: int | None = None

    @abc.abstractmethod
    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Packed forward.

        Args:
            input_ids: ``(T,) int64`` token ids of B sequences concatenated, specials included.
            cu_seqlens: ``(B+1,) int32`` cumulative sequence starts, ``cu_seqlens[0] == 0``,
                ``cu_seqlens[-1] == T``.
            max_seqlen: longest sequence in the batch (host int; no device sync needed).
        Returns:
            ``(T, D)`` final-layer hidden states in the model's compute dtype.
        """

    @abc.abstractmethod
    def pool(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """``(T, D)`` hidden + ``(B+1,) int32`` cu_seqlens -> ``(B, D) float32`` per-sequence embedding,
        pooled exactly as the original tool pools this model."""

    def embed_packed(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
    ) -> torch.Tensor:
        """forward + pool: ``(B, D) float32``."""
        return self.pool(self(input_ids, cu_seqlens, max_seqlen), cu_seqlens)

    @abc.abstractmethod
    def embed_reference(self, sequences: list[str]) -> torch.Tensor:
        """The "v1" path: padded batch, fp32, the library's own (or official-equivalent) forward.

        Returns ``(B, D) float32`` pooled like `pool`. Used by validation, never in production.
        """


class FiniteMonitor:
    """Device-side NaN/Inf flag over pooled batches, checked with one host sync per output unit.

    `note` runs inside the forward (no synchronisation); `check` synchronises once, resets, and
    raises `pipeline.core.errors.NumericalError` naming the first bad batch since the previous check.
    """

    def __init__(self, model_name: str, device: torch.device | str) -> None:
        self.model_name = model_name
        self.reset(torch.device(device))

    def reset(self, device: torch.device | None = None) -> None:
        # fresh tensors rather than in-place updates: under inference_mode they are inference tensors
        device = device or self._bad.device
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self._first = torch.full((), -1, dtype=torch.int64, device=device)
        self._batches = 0

    def note(self, pooled: torch.Tensor) -> None:
        """Record whether ``pooled`` (any shape, on the monitored device) holds NaN/Inf."""
        if self._bad.device != pooled.device:  # the model moved since the monitor was made
            self.reset(pooled.device)
        bad = ~torch.isfinite(pooled).all()
        self._first = torch.where(
            bad & (self._first < 0), torch.full_like(self._first, self._batches), self._first
        )
        self._bad = self._bad | bad
        self._batches += 1

    def check(self, context: str, *, precision: str, backend: str) -> None:
        bad, first, batches = bool(self._bad.item()), int(self._first.item()), self._batches
        self.reset()
        if bad:
            raise NumericalError(
                f"NaN or Inf in {self.model_name} embeddings in {context} "
                f"(first bad batch: {first} of {batches} "
                f"since the last check; precision {precision}, backend {backend}); rerun this part with "
                "--precision bf16 or fp32 and check the input sequences"
            )
