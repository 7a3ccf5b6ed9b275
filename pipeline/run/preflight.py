"""Model checks that run before any embedding: every specifier resolves, and the classifier's input
width equals DNABERT-S width + ESM-2 width.

Widths come from the architecture tables (``ESM2_ARCHS``, ``RANDOM_ARCHS``), a DNABERT-S
``config.json`` or the ``cfg`` of a local ESM-2 checkpoint (read memory-mapped, after the loader's
archive check): no model is built.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.core.config import PredictConfig, is_random_classifier
from pipeline.core.errors import ModelLoadError
from pipeline.models.registry import random_architecture


def esm_width(spec: str) -> int:
    """Embedding width of an ``--esm-model`` specifier.

    Raises `ModelLoadError` for a specifier that names no known architecture and no existing file.
    """
    from pipeline.models.esm2.checkpoint import (
        ESM2_ARCHS,
        hub_checkpoint_path,
        unknown_model_error,
    )

    spec = spec.strip()
    name = random_architecture(spec, ESM2_ARCHS, "ESM-2")
    if name is not None:
        return ESM2_ARCHS[name].embed_dim
    if spec in ESM2_ARCHS:
        return ESM2_ARCHS[spec].embed_dim
    path = Path(spec).expanduser()
    if path.is_file():
        return _checkpoint_width(path)
    if re.fullmatch(r"esm2_t\d+_\w+", spec) and hub_checkpoint_path(spec).is_file():
        return _checkpoint_width(hub_checkpoint_path(spec))
    raise unknown_model_error(spec)


def _checkpoint_width(path: Path) -> int:
    """``cfg.model.encoder_embed_dim`` of a fair-esm checkpoint; the loader's own safe read
    (archive checked first, memory-mapped, so the weights are not read into memory)."""
    from pipeline.models.esm2.checkpoint import safe_torch_load

    data = safe_torch_load(path)
    try:
        return int(data["cfg"]["model"].encoder_embed_dim)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise ModelLoadError(
            f"{path} is not a fair-esm ESM-2 checkpoint (no cfg.model.encoder_embed_dim); give an "
            "original fair-esm .pt file, a model name or random:<name>"
        ) from None


def dnabert_width(spec: str) -> int:
    """Hidden width of a ``--dnabert-model`` specifier (a random architecture or a config.json)."""
    from pipeline.models.dnabert_s.checkpoint import read_config, resolve_checkpoint_dir
    from pipeline.models.dnabert_s.model import RANDOM_ARCHS

    spec = spec.strip()
    name = random_architecture(spec, RANDOM_ARCHS, "DNABERT-S")
    if name is not None:
        return RANDOM_ARCHS[name].hidden_size
    return read_config(resolve_checkpoint_dir(spec)).hidden_size


def preflight_models(cfg: PredictConfig) -> int:
    """Check both encoders and the classifier of ``cfg`` without embedding anything.

    Returns the classifier input width (DNABERT-S + ESM-2). Raises `ModelLoadError` naming the bad
    specifier or the width mismatch.
    """
    from pipeline.classify.mlp import load_classifier

    dna = dnabert_width(cfg.dnabert.model)
    protein = esm_width(cfg.esm.model)
    width = dna + protein
    spec = str(cfg.classifier)
    if is_random_classifier(spec):
        try:
            int(spec.partition(":")[2] or "0")  # the rule of `load_classifier`
        except ValueError:
            raise ModelLoadError(
                f"classifier {spec!r}: the seed after 'random:' must be an integer"
            ) from None
        return width
    load_classifier(spec, input_dim=width)  # refuses a file of another width, naming both widths
    return width


__all__ = ["dnabert_width", "esm_width", "preflight_models"]
