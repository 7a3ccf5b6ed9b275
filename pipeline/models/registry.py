"""Model kind -> loader. Loaders are imported lazily so one kind never pulls in the other's dependencies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pipeline.core.config import KIND_COLUMN
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from pipeline.core.config import EncoderConfig
    from pipeline.models.base import PackedEncoder

"""Which prepared-shard column each model kind embeds."""


def load_encoder(
    kind: Literal["esm2", "dnabert-s"],
    cfg: EncoderConfig,
    device: torch.device | str,
    *,
    disable_compile: bool = False,
) -> PackedEncoder:
    """Build the packed encoder of ``kind`` from ``cfg`` on ``device``.

    ``disable_compile`` is ``Settings.disable_compile``: it turns ``cfg.compile`` off.
    """
    if kind == "esm2":
        from pipeline.models.esm2 import load_esm2

        return load_esm2(cfg, device, disable_compile=disable_compile)
    if kind == "dnabert-s":
        from pipeline.models.dnabert_s import load_dnabert_s

        if disable_compile and cfg.compile:
            from dataclasses import replace

            cfg = replace(cfg, compile=False)
        return load_dnabert_s(cfg, device)
    raise ConfigError(f"unknown model kind {kind!r}; use one of {', '.join(KIND_COLUMN)}")


__all__ = ["load_encoder"]
