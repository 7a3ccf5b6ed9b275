"""ESM-2 checkpoints: the known architectures, safe loading of fair-esm files, the hub cache, and
``random:<name>`` specifiers. `load_esm2` turns a model specifier into a `PackedESM2`."""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import EncoderConfig
from pipeline.core.errors import ModelLoadError
from pipeline.models.esm2.model import FP8_COMPILED_BACKENDS, PackedESM2
from pipeline.models.fp8 import check_fp8
from pipeline.models.registry import random_architecture
from pipeline.models.weights import check_dense, load_torch_file, positive_ints, shape_problems

log = logging.getLogger(__name__)

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
REGRESSION_URL = "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"


@dataclass(frozen=True)
class ESM2Arch:
    num_layers: int
    embed_dim: int
    attention_heads: int


ESM2_ARCHS: dict[str, ESM2Arch] = {
    "esm2_t6_8M_UR50D": ESM2Arch(6, 320, 20),
    "esm2_t12_35M_UR50D": ESM2Arch(12, 480, 20),
    "esm2_t30_150M_UR50D": ESM2Arch(30, 640, 20),
    "esm2_t33_650M_UR50D": ESM2Arch(33, 1280, 20),
    "esm2_t36_3B_UR50D": ESM2Arch(36, 2560, 40),
    "esm2_t48_15B_UR50D": ESM2Arch(48, 5120, 40),
}

# Everything a real fair-esm ESM-2 checkpoint pickles besides containers, tensors and primitives:
# the fairseq model config is an argparse.Namespace (model_data["cfg"]["model"]).
SAFE_CHECKPOINT_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


def _build_esm2(arch: ESM2Arch, device: torch.device, token_dropout: bool = True) -> torch.nn.Module:
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    with torch.device(device):
        return ESM2(
            num_layers=arch.num_layers,
            embed_dim=arch.embed_dim,
            attention_heads=arch.attention_heads,
            alphabet=Alphabet.from_architecture("ESM-1b"),
            token_dropout=token_dropout,
        )


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True, mmap=True)`` allowing exactly what fair-esm ESM-2 checkpoints
    pickle, after `pipeline.models.weights.check_torch_archive` (no zip bombs, no legacy format)."""
    try:
        return load_torch_file(path, "ESM-2 checkpoint", SAFE_CHECKPOINT_GLOBALS)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"refused to load {path}: it contains pickled objects outside the ESM-2 checkpoint allow-list "
            "(argparse.Namespace, tensors, containers). "
            f"Details: {str(exc).splitlines()[-1] if str(exc) else exc}. "
            "Use an original fair-esm checkpoint"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"cannot read checkpoint {path}: {exc}") from None


def check_arch(arch: ESM2Arch, source: str) -> None:
    """Refuse an architecture larger than the largest ESM-2 in any dimension, or one that is no
    transformer (width not divisible by heads, odd rotary head width). Other sizes than the six
    published ones are allowed (tests and distilled models use them) once their tensors match."""
    if arch in ESM2_ARCHS.values():
        return
    name, largest = max(ESM2_ARCHS.items(), key=lambda item: item[1].embed_dim)
    for field in ("num_layers", "embed_dim", "attention_heads"):
        if getattr(arch, field) > getattr(largest, field):
            raise ModelLoadError(
                f"{source}: its cfg declares {field}={getattr(arch, field)}, larger than the largest ESM-2 "
                f"({name}: {largest}); known sizes: {', '.join(ESM2_ARCHS)}. Use a fair-esm ESM-2 checkpoint"
            )
    if arch.embed_dim % arch.attention_heads or (arch.embed_dim // arch.attention_heads) % 2:
        raise ModelLoadError(
            f"{source}: its cfg declares embed_dim={arch.embed_dim} with {arch.attention_heads} heads; ESM-2 "
            "needs a width divisible by the heads into an even head width. Use a fair-esm ESM-2 checkpoint"
        )
    log.info(
        "%s: %s is not one of the published ESM-2 sizes; loading it because its tensors match", source, arch
    )


_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")


def esm2_from_checkpoint(model_data: Any, source: str, device: torch.device) -> torch.nn.Module:
    """Build a fair-esm ``ESM2`` from a loaded fair-esm checkpoint dict (``{"model", "cfg"}``).

    Nothing of the declared size is allocated before the declaration is checked: the cfg against
    the known sizes (`check_arch`), each tensor against the bytes behind it
    (`pipeline.models.weights.check_dense`), and the model built on the meta device against the
    tensors' names and shapes. Only then is the model built on ``device`` and filled.
    """
    not_esm = (
        f"{source} is not a fair-esm ESM-2 checkpoint: expected {{'model': state_dict, 'cfg': {{'model': "
        "Namespace(encoder_layers, encoder_embed_dim, encoder_attention_heads, ...)}}}}"
    )
    try:
        cfg = model_data["cfg"]["model"]
        sizes = {
            "num_layers": cfg.encoder_layers,
            "embed_dim": cfg.encoder_embed_dim,
            "attention_heads": cfg.encoder_attention_heads,
        }
        token_dropout = bool(getattr(cfg, "token_dropout", True))
        raw_state = model_data["model"]
        state = {_PREFIX.sub("", k): v for k, v in raw_state.items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{not_esm} ({exc!r})") from None
    arch = ESM2Arch(**positive_ints(sizes, f"{source}: cfg"))
    check_arch(arch, source)
    check_dense(state, source)
    meta_model = _build_esm2(arch, torch.device("meta"), token_dropout)  # shapes only, no memory
    expected = {k: v.shape for k, v in meta_model.state_dict().items()}
    # the contact head's regression lives in a separate file fair-esm may not ship; it is never used
    optional = {"contact_head.regression.weight", "contact_head.regression.bias"}
    problems = shape_problems({k: v for k, v in expected.items() if k not in optional or k in state}, state)
    if problems:
        raise ModelLoadError(
            f"{source}: weights do not match ESM-2 {arch} from its cfg: " + "; ".join(problems)
        )
    model = _build_esm2(arch, device, token_dropout)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # dtype trouble the shape check cannot see
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), str(exc))
        raise ModelLoadError(f"{source}: weights do not match ESM-2 {arch} from its cfg ({first})") from None
    return model


def hub_checkpoint_path(name: str) -> Path:
    """Where fair-esm keeps a named model: ``torch.hub.get_dir()/checkpoints/<name>.pt``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"


def _download(name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    regression = target.with_name(f"{name}-contact-regression.pt")
    try:
        torch.hub.download_url_to_file(CHECKPOINT_URL.format(name=name), str(target), progress=False)
        if not regression.exists():
            torch.hub.download_url_to_file(REGRESSION_URL.format(name=name), str(regression), progress=False)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise ModelLoadError(
            f"ESM-2 model {name!r} is not in the torch hub cache (expected {target}) "
            "and downloading it failed "
            f"({exc}). Copy {name}.pt there, pass a local checkpoint path, or use random:{name} for tests"
        ) from None


def _seeded_random(name: str, seed: int, device: torch.device) -> torch.nn.Module:
    arch = ESM2_ARCHS[name]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return _build_esm2(arch, device)


def unknown_model_error(spec: str) -> ModelLoadError:
    """The error for an ``--esm-model`` that is no name, no ``random:`` architecture and no file."""
    return ModelLoadError(
        f"ESM-2 model {spec!r} is neither a fair-esm model name ({', '.join(ESM2_ARCHS)}), "
        "random:<name>, nor an existing checkpoint file"
    )


def load_esm2(
    cfg: EncoderConfig,
    device: torch.device | str,
    *,
    disable_compile: bool = False,
    allow_download: bool = True,
) -> PackedESM2:
    """Build a `PackedESM2` from a model specifier.

    Specifiers: a fair-esm name (``esm2_t36_3B_UR50D`` ...; read from fair-esm's hub cache
    ``torch.hub.get_dir()/checkpoints/<name>.pt``, downloaded there when missing and
    ``allow_download``), a path to a local fair-esm checkpoint (``<stem>-contact-regression.pt`` beside
    it is optional: contact prediction is not used), or ``random:<fair-esm name>`` (seeded random
    weights built directly on ``device``). Checkpoints are read with ``weights_only=True`` and an
    explicit allow-list. ``disable_compile`` (``Settings.disable_compile``) overrides ``cfg.compile``.
    ``fp8`` compiles the layer even without ``cfg.compile`` with the flash kernels (torchao's per-token
    activation scaling is only fast when fused by the compiler; `FP8_COMPILED_BACKENDS`). It is refused
    before any weight is read where FP8 cannot run.
    """
    device = torch.device(device)
    if cfg.precision == "fp8":
        check_fp8(device)
    spec = cfg.model.strip()
    name = random_architecture(spec, ESM2_ARCHS, "ESM-2")
    if name is not None:
        esm = _seeded_random(name, cfg.seed, device)
    elif spec in ESM2_ARCHS or re.fullmatch(r"esm2_t\d+_\w+", spec):
        path = hub_checkpoint_path(spec)
        if not path.exists():
            if not allow_download:
                raise ModelLoadError(
                    f"ESM-2 model {spec!r} is not in the torch hub cache (expected {path}); "
                    f"copy {spec}.pt there or pass a local checkpoint path"
                )
            _download(spec, path)
        esm = esm2_from_checkpoint(safe_torch_load(path), str(path), device)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise unknown_model_error(spec)
        esm = esm2_from_checkpoint(safe_torch_load(path), str(path), device)
    use_compile = cfg.compile and not disable_compile
    model = PackedESM2(esm, spec=spec, precision=cfg.precision, backend=cfg.attention, compile=use_compile)
    if cfg.precision == "fp8" and not disable_compile and model.backend in FP8_COMPILED_BACKENDS:
        model.enable_compile()
    log.info(
        "loaded ESM-2 %s: %d layers, D=%d, %s, backend %s, compile=%s",
        spec,
        model.num_layers,
        model.embed_dim,
        cfg.precision,
        model.backend,
        model.compiled,
    )
    return model


__all__ = [
    "ESM2_ARCHS",
    "ESM2Arch",
    "esm2_from_checkpoint",
    "hub_checkpoint_path",
    "load_esm2",
    "safe_torch_load",
    "unknown_model_error",
]
