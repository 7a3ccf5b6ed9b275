"""FP8 weights for Linear layers (``--precision fp8``) through torchao, and where FP8 can run.

FP8 here means torchao's ``Float8DynamicActivationFloat8WeightConfig`` with row-wise scales: each
weight row is quantized once to ``float8_e4m3fn`` with its own scale (static per-output-channel
weight scales), each activation row (token) is quantized on the fly with its own scale, and the
matmul runs on the FP8 tensor cores (``torch._scaled_mm``) with a bf16 result. Everything else
(LayerNorm, attention, GELU, residuals) stays in bf16, so ``fp8`` computes in bf16 apart from the
quantized matmuls; models that quantize nothing (DNABERT-S) simply run in bf16.

torchao is an optional dependency (``pip install 'virnucpro[fp8]'``); nothing here imports it until
a weight is quantized, so CPU installs and tests never need it.
"""

from __future__ import annotations

import importlib.util

import torch

from pipeline.core.errors import BackendUnavailableError

#: Oldest CUDA compute capability with FP8 tensor cores (Ada Lovelace 8.9; Hopper is 9.0).
FP8_MIN_CAPABILITY = (8, 9)


def fp8_unavailable_reason(device: torch.device | str) -> str | None:
    """Why FP8 matmuls cannot run on ``device`` (None when they can)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 matmuls need an NVIDIA GPU with FP8 tensor cores, got device {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available in this torch build or on this machine"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return f"{device} is not visible (this machine shows {torch.cuda.device_count()} CUDA device(s))"
    capability = torch.cuda.get_device_capability(index)
    if capability < FP8_MIN_CAPABILITY:
        return (
            f"{torch.cuda.get_device_name(index)} has compute capability {capability[0]}.{capability[1]}; "
            f"FP8 tensor cores need {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer (Ada, Hopper)"
        )
    if importlib.util.find_spec("torchao") is None:
        return "the torchao package is not installed (pip install 'virnucpro[fp8]')"
    return None


def check_fp8(device: torch.device | str) -> None:
    """Raise `BackendUnavailableError` when ``--precision fp8`` cannot run on ``device``."""
    reason = fp8_unavailable_reason(device)
    if reason is not None:
        raise BackendUnavailableError(
            f"--precision fp8 is not available: {reason}. Use --precision bf16 (or fp16) here"
        )


def quantize_weight(weight: torch.Tensor, *, fast_accum: bool = True) -> torch.Tensor:
    """``(out, in)`` weight -> torchao FP8 weight (row-wise scales) that ``F.linear`` accepts.

    ``fast_accum``: Hopper's faster FP8 accumulation (torchao's default). Measured on ESM-2 3B it
    was 8.6 % faster than the exact accumulation at the same cosine to fp32 (docs/esm2.md).
    """
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8MMConfig,
        PerRow,
        quantize_,
    )

    out_features, in_features = weight.shape
    holder = torch.nn.Linear(
        in_features, out_features, bias=False, device=weight.device, dtype=torch.bfloat16
    )
    holder.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(),
        mm_config=Float8MMConfig(use_fast_accum=fast_accum),
        # torchao would otherwise switch on inductor's coordinate-descent tuning for the whole process:
        # longer compiles and no measured gain here
        set_inductor_config=False,
    )
    quantize_(holder, config)
    return holder.weight


__all__ = ["FP8_MIN_CAPABILITY", "check_fp8", "fp8_unavailable_reason", "quantize_weight"]
