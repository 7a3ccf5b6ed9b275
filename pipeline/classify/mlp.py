"""The VirNucPro MLP head and its two on-disk formats.

The network is the published one: ``Linear(D -> 512) -> BatchNorm1d -> ReLU -> Dropout(0.5) ->
Linear(512 -> 2)``, fed ``concat(DNABERT-S embedding, ESM-2 embedding)`` (DNA first). Attribute names
(``hidden_layer``, ``bn1``, ``output_layer``, ``dropout``) match the original so state dicts line up.

Formats:

- **Original ``.pth``** (``300_model.pth`` / ``500_model.pth``): a whole pickled module written by
  ``torch.save(model)`` from the original training script, so the pickle names its class
  ``__main__.MLPClassifier``. Unpickling such a file normally executes whatever the pickle says; here
  it goes through ``torch.load(weights_only=True)`` with an allow-list that maps only that class name
  (and the three torch layers inside it) onto a stub, then the weights are copied into a fresh
  `MLPClassifier`. Anything else in the pickle (``os.system``, other classes) is refused with
  `ModelLoadError` before it runs. A plain state dict saved as ``.pth`` is accepted too.
- **Project ``.safetensors``**: the state dict plus a JSON header (``virnucpro.classifier/1``) that
  records input widths, the embedding models and the chunk size used in training.
- ``random`` (or ``random:<seed>``): seeded random weights for demos and tests; scores mean nothing.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.atomic import atomic_path
from pipeline.core.config import is_random_classifier
from pipeline.core.errors import ModelLoadError
from pipeline.models.weights import check_dense, load_torch_file

log = logging.getLogger(__name__)

FORMAT = "virnucpro.classifier/1"
HIDDEN_DIM = 512
NUM_CLASSES = 2
DEFAULT_DNA_DIM = 768
DEFAULT_PROTEIN_DIM = 2560
# DNABERT-S 768 + ESM-2 15B 5120: no classifier of these embeddings is wider
MAX_INPUT_DIM = 768 + 5120
# Module names the original MLPClassifier may be pickled under: the training script ran as
# __main__; the other names cover copies of the class imported from the original's scripts.
ORIGINAL_MODULES = ("__main__", "train", "prediction", "units")
_STATE_KEYS = (
    "hidden_layer.weight",
    "hidden_layer.bias",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "output_layer.weight",
    "output_layer.bias",
)


@dataclass(frozen=True)
class ClassifierMeta:
    """What is known about a loaded classifier (recorded in run records and the safetensors header).

    Attributes:
        source: ``random``, ``virnucpro-pth`` or ``safetensors``.
        path: file it came from (None for ``random``).
        input_dim / hidden_dim: layer widths.
        dna_dim / protein_dim: split of ``input_dim`` (None when the file does not say).
        models: embedding model specifiers used in training, e.g. ``{"dnabert-s": ..., "esm2": ...}``.
        chunk_size: chunk length used in training (None when unknown).
        extra: anything else stored with the weights (training metrics, seed).
    """

    source: str
    path: str | None
    input_dim: int
    hidden_dim: int = HIDDEN_DIM
    dna_dim: int | None = None
    protein_dim: int | None = None
    models: dict[str, str] = field(default_factory=dict)
    chunk_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def meaningful(self) -> bool:
        return self.source != "random"


class MLPClassifier(nn.Module):
    """Input ``(N, D) float32`` (DNA embedding then protein embedding) -> logits ``(N, 2) float32``.

    Column 0 is "others", column 1 is "virus" (the original's label map).
    """

    def __init__(
        self,
        input_dim: int = DEFAULT_DNA_DIM + DEFAULT_PROTEIN_DIM,
        hidden_dim: int = HIDDEN_DIM,
        num_class: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)
        self.meta = ClassifierMeta(source="random", path=None, input_dim=input_dim, hidden_dim=hidden_dim)

    @property
    def input_dim(self) -> int:
        return self.hidden_layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> softmax ``(N, 2) float32`` in eval mode (BatchNorm uses running stats)."""
        self.eval()
        return F.softmax(self(x.float()), dim=1)


class _PickledOriginal(nn.Module):
    """Unpickling target for the original class: receives its ``__dict__`` and is never run."""


def random_classifier(input_dim: int, seed: int = 0) -> MLPClassifier:
    """Seeded random weights (demo/tests). Not biologically meaningful."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = MLPClassifier(input_dim)
    finally:
        torch.random.set_rng_state(gen_state)
    model.meta = ClassifierMeta(
        source="random",
        path=None,
        input_dim=input_dim,
        extra={"seed": seed, "note": "random weights, not biologically meaningful"},
    )
    return model.eval()


def _check_sizes(state: Mapping[str, torch.Tensor], input_dim: int, hidden_dim: int, where: str) -> None:
    """Before the MLP is allocated: the widths within the known ones, every tensor of the shape
    those widths give and backed by its own bytes in the file (a stride-0 view of one float can
    declare 8000 x 8000 in a few bytes)."""
    if input_dim > MAX_INPUT_DIM or hidden_dim > HIDDEN_DIM:
        raise ModelLoadError(
            f"{where} declares a {input_dim} -> {hidden_dim} -> 2 MLP, wider than any VirNucPro classifier "
            f"(inputs at most {MAX_INPUT_DIM} = the widest DNABERT-S + ESM-2 embeddings, hidden at most "
            f"{HIDDEN_DIM}; the published ones are 3328 -> 512 -> 2)"
        )
    shapes = {
        "hidden_layer.weight": (hidden_dim, input_dim),
        "hidden_layer.bias": (hidden_dim,),
        "bn1.weight": (hidden_dim,),
        "bn1.bias": (hidden_dim,),
        "bn1.running_mean": (hidden_dim,),
        "bn1.running_var": (hidden_dim,),
        "bn1.num_batches_tracked": (),
        "output_layer.weight": (NUM_CLASSES, hidden_dim),
        "output_layer.bias": (NUM_CLASSES,),
    }
    wrong = [f"{k} {tuple(v.shape)} != {shapes[k]}" for k, v in state.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise ModelLoadError(f"{where}: tensor shapes do not form one MLP: {', '.join(wrong[:4])}")
    check_dense(state, where)


def _from_state_dict(state: Mapping[str, Any], where: str) -> MLPClassifier:
    keys = set(state)
    missing = [k for k in _STATE_KEYS if k not in keys and k != "bn1.num_batches_tracked"]
    unexpected = sorted(keys - set(_STATE_KEYS))
    if missing or unexpected:
        raise ModelLoadError(
            f"{where} does not hold a VirNucPro MLP: missing {missing or 'nothing'}, "
            f"unexpected {unexpected[:8] or 'nothing'}; give an original 300_model.pth/500_model.pth "
            "or a classifier saved by `virnucpro train`"
        )
    for key in keys:
        if not isinstance(state[key], torch.Tensor):
            raise ModelLoadError(f"{where}: entry {key!r} is a {type(state[key]).__name__}, not a tensor")
    if state["hidden_layer.weight"].dim() != 2 or state["output_layer.weight"].dim() != 2:
        raise ModelLoadError(f"{where}: layer weights are not matrices; the file is not a VirNucPro MLP")
    hidden_dim, input_dim = state["hidden_layer.weight"].shape
    num_class = state["output_layer.weight"].shape[0]
    if num_class != NUM_CLASSES:
        raise ModelLoadError(f"{where} has {num_class} output classes; VirNucPro classifiers have 2")
    _check_sizes(state, int(input_dim), int(hidden_dim), where)
    model = MLPClassifier(int(input_dim), int(hidden_dim), NUM_CLASSES)
    try:
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
        )
    except RuntimeError as exc:
        raise ModelLoadError(f"{where}: weights do not fit the MLP ({exc})") from None
    return model


def _allow_list() -> list[Any]:
    entries: list[Any] = [nn.Linear, nn.BatchNorm1d, nn.Dropout]
    entries += [(_PickledOriginal, f"{mod}.MLPClassifier") for mod in ORIGINAL_MODULES]
    return entries


def _load_pth(path: Path) -> MLPClassifier:
    try:
        obj = load_torch_file(path, "classifier", _allow_list())
    except pickle.UnpicklingError as exc:
        # torch's message wraps the useful line (the refused global, e.g. "posix.system", or the
        # unpickler's complaint) in advice to retry unsafely; keep only the useful line.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next(
            (
                line
                for line in lines
                if "GLOBAL" in line
                or "Unsupported" in line
                or "global" in line.lower()
                and "weights_only" not in line
            ),
            "not a torch checkpoint",
        )
        raise ModelLoadError(
            f"refused to load {path}: it is not a plain VirNucPro MLPClassifier pickle and loading it "
            f"could run code ({detail.strip()}); only the original 300_model.pth/500_model.pth "
            "layout or project .safetensors files are accepted"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        KeyError,
        IndexError,
    ) as exc:
        raise ModelLoadError(
            f"cannot read classifier {path}: not a torch checkpoint ({type(exc).__name__}); give the "
            "original 300_model.pth/500_model.pth, a .safetensors file from virnucpro train, or 'random'"
        ) from None
    if isinstance(obj, _PickledOriginal):
        try:
            state = obj.state_dict()
        except (AttributeError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"{path}: the pickled MLPClassifier is incomplete ({exc})") from None
    elif isinstance(obj, Mapping):
        state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), Mapping) else obj
    else:
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a VirNucPro MLPClassifier")
    model = _from_state_dict(state, str(path))
    model.meta = ClassifierMeta(
        source="virnucpro-pth",
        path=str(path),
        input_dim=model.input_dim,
        hidden_dim=model.hidden_layer.out_features,
    )
    return model


def _load_safetensors(path: Path) -> MLPClassifier:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read classifier {path} as safetensors ({exc}); give the original "
            "300_model.pth / 500_model.pth, a .safetensors file written by `virnucpro train`, "
            "or 'random'"
        ) from None
    if header.get("format") != FORMAT:
        raise ModelLoadError(
            f"{path} is a safetensors file but not a VirNucPro classifier (format="
            f"{header.get('format')!r}, expected {FORMAT!r}); save one with `virnucpro train`"
        )
    try:
        info = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: classifier header is not valid JSON ({exc})") from None
    model = _from_state_dict(state, str(path))
    model.meta = ClassifierMeta(
        source="safetensors",
        path=str(path),
        input_dim=model.input_dim,
        hidden_dim=model.hidden_layer.out_features,
        dna_dim=info.get("dna_dim"),
        protein_dim=info.get("protein_dim"),
        models=dict(info.get("models") or {}),
        chunk_size=info.get("chunk_size"),
        extra=dict(info.get("extra") or {}),
    )
    return model


def load_classifier(spec: str | Path, input_dim: int | None = None) -> MLPClassifier:
    """Load a classifier in eval mode on CPU.

    Args:
        spec: path to an original ``.pth``, a project ``.safetensors`` file, or ``random`` /
            ``random:<seed>``.
        input_dim: expected ``D_dna + D_prot`` of the embeddings it will score (required for
            ``random``); a file whose width differs is refused.
    Raises:
        ModelLoadError: missing file, unknown or unsafe format, wrong width.
    """
    text = str(spec)
    if is_random_classifier(text):
        if input_dim is None:
            raise ModelLoadError("a random classifier needs input_dim (DNABERT-S width + ESM-2 width)")
        seed_text = text.partition(":")[2] or "0"
        try:
            seed = int(seed_text)
        except ValueError:
            raise ModelLoadError(
                f"classifier {text!r}: the seed after 'random:' must be an integer"
            ) from None
        return random_classifier(input_dim, seed)
    path = Path(text)
    if not path.is_file():
        raise ModelLoadError(
            f"classifier file {path} does not exist; give a .pth, a .safetensors or 'random'"
        )
    if path.suffix == ".safetensors":
        model = _load_safetensors(path)
    elif path.suffix in {".pth", ".pt", ".pkl", ".bin"}:
        model = _load_pth(path)
    else:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        # torch.save writes a zip archive ("PK"); anything else is tried as safetensors.
        model = _load_pth(path) if magic == b"PK" else _load_safetensors(path)
    if input_dim is not None and model.input_dim != input_dim:
        dims = ""
        if model.meta.dna_dim and model.meta.protein_dim:
            dims = f" (DNA {model.meta.dna_dim} + protein {model.meta.protein_dim})"
        raise ModelLoadError(
            f"classifier {path} expects {model.input_dim}-wide inputs{dims} but the embeddings are "
            f"{input_dim} wide; use the embedding models it was trained with "
            "(the published ones need DNABERT-S 768 + ESM-2 3B 2560 = 3328)"
        )
    log.info("loaded classifier %s (%s, input %d)", path, model.meta.source, model.input_dim)
    return model.eval()


def save_classifier(
    model: MLPClassifier,
    path: str | Path,
    *,
    dna_dim: int | None = None,
    protein_dim: int | None = None,
    models: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a project ``.safetensors`` file (atomically) and return its path."""
    from safetensors.torch import save_file

    if dna_dim is not None and protein_dim is not None and dna_dim + protein_dim != model.input_dim:
        raise ModelLoadError(
            f"dna_dim {dna_dim} + protein_dim {protein_dim} != classifier input width {model.input_dim}"
        )
    meta = {
        "dna_dim": dna_dim,
        "protein_dim": protein_dim,
        "input_dim": model.input_dim,
        "hidden_dim": model.hidden_layer.out_features,
        "models": dict(models or {}),
        "chunk_size": chunk_size,
        "extra": dict(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta, sort_keys=True)})
    return out


def meta_dict(model: MLPClassifier) -> dict[str, Any]:
    """JSON-ready description of a loaded classifier (for run records)."""
    return asdict(model.meta)


__all__ = [
    "ClassifierMeta",
    "MLPClassifier",
    "load_classifier",
    "meta_dict",
    "random_classifier",
    "save_classifier",
]
