"""Model kind -> loader. Loaders are imported lazily so one kind never pulls in the other's dependencies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pipeline.core.config import KIND_COLUMN
from pipeline.core.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import torch

    from pipeline.core.config import EncoderConfig
    from pipeline.models.base import PackedEncoder


#: Specifier prefix of the real architectures with seeded random weights (``random:<name>``).
RANDOM_PREFIX = "random:"


def random_architecture(spec: str, known: Mapping[str, Any], model: str) -> str | None:
    """The architecture name of a ``random:<name>`` specifier of ``model`` (a key of ``known``);
    None for any other specifier. Raises `ModelLoadError` listing the known names otherwise."""
    if not spec.startswith(RANDOM_PREFIX):
        return None
    name = spec[len(RANDOM_PREFIX) :]
    if name not in known:
        raise ModelLoadError(
            f"unknown {model} architecture {name!r} in {spec!r}; use one of "
            + ", ".join(RANDOM_PREFIX + n for n in known)
        )
    return name


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


__all__ = ["RANDOM_PREFIX", "load_encoder", "random_architecture"]
