"""Model checks that run before any embedding: every specifier resolves, and the classifier's input
width equals DNABERT-S width + ESM-2 width.

Widths come from the architecture tables (``ESM2_ARCHS``, ``RANDOM_ARCHS``), a DNABERT-S
``config.json`` or the header of a local ESM-2 checkpoint (memory-mapped, no weights read): no model
is built. A legacy-format (pre-zip) ESM-2 checkpoint cannot be memory-mapped; its width is checked
when it is loaded, as before.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.core.config import PredictConfig, is_random_classifier
from pipeline.core.errors import ModelLoadError

_RANDOM = "random:"


def esm_width(spec: str) -> int | None:
    """Embedding width of an ``--esm-model`` specifier; None when only loading can tell.

    Raises `ModelLoadError` for a specifier that names no known architecture and no existing file.
    """
    from pipeline.models.esm2.checkpoint import ESM2_ARCHS, hub_checkpoint_path

    spec = spec.strip()
    if spec.startswith(_RANDOM):
        name = spec[len(_RANDOM) :]
        if name not in ESM2_ARCHS:
            raise ModelLoadError(
                f"unknown ESM-2 architecture {name!r} in {spec!r}; use one of "
                + ", ".join(f"random:{n}" for n in ESM2_ARCHS)
            )
        return ESM2_ARCHS[name].embed_dim
    if spec in ESM2_ARCHS:
        return ESM2_ARCHS[spec].embed_dim
    path = Path(spec).expanduser()
    if path.is_file():
        return _checkpoint_width(path)
    if re.fullmatch(r"esm2_t\d+_\w+", spec) and hub_checkpoint_path(spec).is_file():
        return _checkpoint_width(hub_checkpoint_path(spec))
    raise ModelLoadError(
        f"ESM-2 model {spec!r} is neither a fair-esm model name ({', '.join(ESM2_ARCHS)}), "
        "random:<name>, nor an existing checkpoint file"
    )


def _checkpoint_width(path: Path) -> int | None:
    """``cfg.model.encoder_embed_dim`` of a fair-esm checkpoint, read memory-mapped (no weights in RAM).

    A file that is no torch checkpoint at all is refused here; a legacy (pre-zip) checkpoint cannot
    be memory-mapped, so its width is left to the loader (None).
    """
    import argparse

    import torch

    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x80\x02":  # torch's legacy pickle format
        return None
    if magic != b"PK":
        raise ModelLoadError(
            f"ESM-2 checkpoint {path} is not a torch checkpoint file; give a fair-esm .pt file, a model "
            "name or random:<name>"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        return int(data["cfg"]["model"].encoder_embed_dim)
    except Exception as exc:  # refused globals, a truncated archive, another layout
        raise ModelLoadError(
            f"ESM-2 checkpoint {path} cannot be read as a fair-esm checkpoint ({type(exc).__name__}); "
            "give an original fair-esm .pt file"
        ) from None


def dnabert_width(spec: str) -> int:
    """Hidden width of a ``--dnabert-model`` specifier (a random architecture or a config.json)."""
    from pipeline.models.dnabert_s.checkpoint import read_config, resolve_checkpoint_dir
    from pipeline.models.dnabert_s.model import RANDOM_ARCHS

    spec = spec.strip()
    if spec.startswith(_RANDOM):
        name = spec[len(_RANDOM) :]
        if name not in RANDOM_ARCHS:
            raise ModelLoadError(
                f"unknown random DNABERT-S architecture {name!r}; use "
                + " or ".join(_RANDOM + n for n in RANDOM_ARCHS)
            )
        return RANDOM_ARCHS[name].hidden_size
    return read_config(resolve_checkpoint_dir(spec)).hidden_size


def preflight_models(cfg: PredictConfig) -> int | None:
    """Check both encoders and the classifier of ``cfg`` without embedding anything.

    Returns the classifier input width (DNABERT-S + ESM-2), or None when the ESM-2 width is only known
    after loading. Raises `ModelLoadError` naming the bad specifier or the width mismatch.
    """
    from pipeline.classify.mlp import load_classifier

    dna = dnabert_width(cfg.dnabert.model)
    protein = esm_width(cfg.esm.model)
    width = None if protein is None else dna + protein
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
