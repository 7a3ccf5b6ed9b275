"""Model kind -> loader. Loaders are imported lazily so one kind never pulls in the other's dependencies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pipeline.core.config import KIND_COLUMN
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from pipeline.core.config import EncoderConfig
    from pipeline.models.base import PackedEncoder


def load_encoder(
    kind: Literal["esm2", "dnabert-s"],
    cfg: EncoderConfig,
    device: torch.device | str,
    *,
    disable_compile: bool = False,
) -> PackedEncoder:
    """Build the packed encoder of ``kind`` (a `pipeline.core.config.MODEL_KINDS` name) from ``cfg``
    on ``device``.

    ``cfg.compile`` is used as given: entry points apply ``Settings.disable_compile`` once, where
    they build the config (`pipeline.run.predict.make_predict_config`, the ``embed`` command).
    ``disable_compile=True`` is for callers that need the eager model whatever the config says
    (the validation reference).
    """
    if kind not in KIND_COLUMN:
        raise ConfigError(f"unknown model kind {kind!r}; use one of {', '.join(KIND_COLUMN)}")
    if disable_compile and cfg.compile:
        from dataclasses import replace

        cfg = replace(cfg, compile=False)
    if kind == "esm2":
        from pipeline.models.esm2 import load_esm2

        return load_esm2(cfg, device)
    from pipeline.models.dnabert_s import load_dnabert_s

    return load_dnabert_s(cfg, device)


__all__ = ["load_encoder"]
