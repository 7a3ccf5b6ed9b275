"""DNABERT-S checkpoints: Hugging Face layout directories (config.json, tokenizer.json, weights)
read safely, the local HF cache, and ``random:dnabert-s`` specifiers. `load_dnabert_s` turns a model
specifier into a `PackedDNABERTS`."""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.core.config import EncoderConfig
from pipeline.core.errors import ModelLoadError
from pipeline.models.attention import resolve_backend
from pipeline.models.base import DTYPES, EncoderInfo
from pipeline.models.dnabert_s.model import (
    BASE_PREFIX,
    IGNORED_KEY_PREFIXES,
    IGNORED_KEYS,
    MAX_TOKENS,
    RANDOM_ARCHS,
    DNABERTArch,
    DNABERTBackbone,
    PackedDNABERTS,
    default_attention,
)
from pipeline.models.dnabert_s.tokenizer import DNABERTTokenizer, random_bpe_tokenizer_json
from pipeline.models.registry import random_architecture
from pipeline.models.weights import check_dense, load_torch_file

log = logging.getLogger(__name__)

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint_dir(spec: str) -> Path:
    """A local directory, or a Hugging Face id looked up in the local HF cache (never downloads)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(
            f"DNABERT-S model {spec!r} is a file; give the checkpoint directory holding "
            "config.json, tokenizer.json and model.safetensors or pytorch_model.bin"
        )
    if not _HF_ID.match(spec):
        raise ModelLoadError(
            f"DNABERT-S model {spec!r} is neither a directory nor a Hugging Face id "
            "(owner/name); give a local checkpoint directory, a cached Hugging Face id "
            "such as zhihan1996/DNABERT-S, or random:dnabert-s"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ... (names vary by version)
        raise ModelLoadError(
            f"Hugging Face model {spec!r} is not in the local Hugging Face cache ({type(exc).__name__}). "
            f"Nothing is downloaded here: on a machine with network run `hf download {spec}` "
            "(or huggingface-cli download) and copy the cache, or pass the checkpoint directory "
            "(config.json, tokenizer.json, weights) as the model"
        ) from None


def read_config(directory: Path) -> DNABERTArch:
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{directory} has no config.json; a DNABERT-S checkpoint directory needs "
            "config.json, tokenizer.json and model.safetensors or pytorch_model.bin"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    arch = DNABERTArch.from_config(data, str(path))
    check_arch(arch, str(path))
    return arch


#: The published DNABERT-S (and DNABERT-2) configuration: no checkpoint may be larger in any field.
KNOWN_ARCH = RANDOM_ARCHS["dnabert-s"]


def check_arch(arch: DNABERTArch, source: str) -> None:
    """Refuse a config.json that declares a model larger than DNABERT-S in any dimension, before
    anything of that size is allocated (smaller configs are the tests' and distilled models')."""
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "type_vocab_size",
    ):
        value, known = getattr(arch, name), getattr(KNOWN_ARCH, name)
        if value > known:
            raise ModelLoadError(
                f"{source} declares {name}={value}, larger than DNABERT-S ({name}={known}); this loader "
                "reads DNABERT-S / DNABERT-2 checkpoints with their own config.json"
            )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read safetensors file {path}: {exc}") from None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory, read without executing code.

    Prefers ``model.safetensors`` (or a sharded ``model.safetensors.index.json``); falls back to
    ``pytorch_model.bin`` through ``torch.load(weights_only=True)``, which refuses pickles that
    reference anything but tensors and plain containers.
    """
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickled = directory / "pytorch_model.bin"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot read {index}: {exc}") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_load_safetensors(directory / shard))
        return state
    if pickled.is_file():
        try:
            state = load_torch_file(pickled, "DNABERT-S checkpoint")
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{pickled} was refused by the safe loader (torch.load weights_only=True): {first}. "
                "Only plain tensor state dicts are accepted; convert the checkpoint to model.safetensors "
                "in a trusted environment"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelLoadError(f"{pickled} does not hold a flat state dict of tensors")
        return state
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise ModelLoadError(
        f"{directory} has no model.safetensors or pytorch_model.bin (found: "
        f"{', '.join(present) or 'nothing'}); point at a complete DNABERT-S checkpoint"
    )


def _listing(keys: set[str], limit: int = 12) -> str:
    names = sorted(keys)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def normalize_state_dict(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map checkpoint keys onto the encoder's and check that every key is accounted for.

    ``bert.``-prefixed keys (checkpoints saved from the masked-LM model) lose the prefix; pooler,
    masked-LM head and buffer keys are dropped (see ``IGNORED_*``). Anything else that is missing,
    unexpected, duplicated or of the wrong shape raises `ModelLoadError` naming the keys.
    """
    out: dict[str, torch.Tensor] = {}
    duplicated: set[str] = set()
    for key, tensor in state.items():
        name = key[len(BASE_PREFIX) :] if key.startswith(BASE_PREFIX) else key
        if name in IGNORED_KEYS or name.startswith(IGNORED_KEY_PREFIXES):
            continue
        if name in out:
            duplicated.add(name)
        out[name] = tensor
    missing = set(expected) - set(out)
    unexpected = set(out) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    if duplicated:
        problems.append(f"key(s) present both with and without the 'bert.' prefix: {_listing(duplicated)}")
    wrong = {k for k in set(out) & set(expected) if tuple(out[k].shape) != tuple(expected[k])}
    if wrong:
        problems.append(
            "wrong shape: "
            + ", ".join(f"{k} {tuple(out[k].shape)} != {tuple(expected[k])}" for k in sorted(wrong)[:8])
        )
    if problems:
        raise ModelLoadError(
            f"{source} does not match the DNABERT-S architecture in its config.json: "
            + "; ".join(problems)
            + ". Use a DNABERT-S / DNABERT-2 checkpoint with its own config.json"
        )
    return out


def _init_random(backbone: DNABERTBackbone, arch: DNABERTArch, seed: int) -> None:
    """Seeded random weights generated on the parameters' device (deterministic per device type)."""
    device = next(backbone.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    std = 0.5 / math.sqrt(arch.hidden_size)  # keeps activations O(1) at every width
    with torch.no_grad():
        for name, param in sorted(backbone.named_parameters()):
            if "LayerNorm" in name or "layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.normal_(0.0, 0.05, generator=gen).add_(base)
            else:
                param.normal_(0.0, std, generator=gen)


def _build(
    arch: DNABERTArch,
    tokenizer: DNABERTTokenizer,
    spec: str,
    device: torch.device,
    state: dict[str, torch.Tensor] | None = None,
    source: str = "checkpoint",
) -> PackedDNABERTS:
    """The model on ``device``; filled from ``state`` when given, else left for `_init_random`.

    It is built on the meta device first (no memory, no default initialization that would be
    overwritten anyway) and ``state`` is checked against it - every tensor backed by its own bytes,
    every name and shape as ``arch`` declares - before anything is allocated on ``device``, so a
    small file that declares a large model is refused without allocating that model.
    """
    with torch.device("meta"):
        info = EncoderInfo(
            kind="dnabert-s",
            spec=spec,
            hidden_size=arch.hidden_size,
            num_layers=arch.num_hidden_layers,
            repr_layer=arch.num_hidden_layers,
            max_tokens=MAX_TOKENS,
            params=0,
        )
        model = PackedDNABERTS(arch, tokenizer, info)
    if state is not None:
        check_dense(state, source)
        expected = {k: v.shape for k, v in model.bert.state_dict().items()}
        state = normalize_state_dict(state, expected, source=source)
    model.to_empty(device=device)
    model._finite.reset(device)
    if state is not None:
        with torch.no_grad():
            for key, target in model.bert.state_dict().items():
                target.copy_(state[key])
    params = sum(p.numel() for p in model.parameters())
    model.info = replace(info, params=params)
    return model


def load_dnabert_s(cfg: EncoderConfig, device: torch.device | str) -> PackedDNABERTS:
    """Build DNABERT-S for ``cfg.model`` on ``device`` in ``cfg.precision``, eval mode.

    Specifiers: ``random:dnabert-s`` / ``random:dnabert-s-tiny`` (seeded by ``cfg.seed``), a local
    checkpoint directory, or a Hugging Face id present in the local HF cache.
    Raises `ModelLoadError` (bad or incomplete checkpoint) or `BackendUnavailableError`.
    """
    device = torch.device(device)
    backend = resolve_backend(
        default_attention(cfg.attention, device, compile=cfg.compile),
        device,
        alibi=True,
        dtype=DTYPES[cfg.precision],  # fp32 rules out the fp16/bf16-only flash kernels
    )
    spec = cfg.model.strip()
    name = random_architecture(spec, RANDOM_ARCHS, "DNABERT-S")
    if name is not None:
        arch = RANDOM_ARCHS[name]
        tokenizer = DNABERTTokenizer(
            random_bpe_tokenizer_json(arch.vocab_size),
            source=f"random BPE tokenizer ({arch.vocab_size} tokens)",
        )
        model = _build(arch, tokenizer, spec, device)
        _init_random(model.bert, arch, cfg.seed)
    else:
        directory = resolve_checkpoint_dir(spec)
        arch = read_config(directory)
        tokenizer = DNABERTTokenizer.from_file(directory / "tokenizer.json")
        if tokenizer.max_id >= arch.vocab_size:
            raise ModelLoadError(
                f"{directory}/tokenizer.json has token ids up to {tokenizer.max_id} but "
                f"config.json vocab_size={arch.vocab_size}; tokenizer and weights do not belong together"
            )
        state = read_state_dict(directory)
        model = _build(arch, tokenizer, spec, device, state, source=str(directory))
    model = model.to(DTYPES[cfg.precision])
    model.reset_alibi()
    model.backend = backend
    if cfg.compile:
        model.enable_compile()
    model.eval().requires_grad_(False)
    log.info(
        "DNABERT-S %s: %d layers, hidden %d, %.1fM parameters, %s, attention %s on %s",
        spec,
        arch.num_hidden_layers,
        arch.hidden_size,
        model.info.params / 1e6,
        cfg.precision,
        backend,
        device,
    )
    return model


__all__ = [
    "KNOWN_ARCH",
    "check_arch",
    "load_dnabert_s",
    "normalize_state_dict",
    "read_config",
    "read_state_dict",
    "resolve_checkpoint_dir",
]
