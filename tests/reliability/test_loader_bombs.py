"""Small model files that declare large models are refused before anything large is allocated.

Each hostile file is loaded in a child process whose address space may grow only ``CEILING_MB`` past
its size after the imports; a loader that builds the declared model first (and compares with the
tensors afterwards) hits the ceiling (``RuntimeError: can't allocate memory``), one that checks the
declared architecture against the known sizes and the tensors actually present refuses it with
`ModelLoadError`. Control cases load genuine checkpoints of the same formats under the same ceiling.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import pytest
import torch
from faults import memory_probe
from fixtures.dnabert import config_dict, state_dict_for, tokenizer_json, write_checkpoint
from fixtures.esm2 import write_fair_esm_checkpoint

CEILING_MB = 300

ESM_SETUP = """
import torch, esm
from pipeline.core.config import EncoderConfig
from pipeline.models.esm2.checkpoint import load_esm2
"""
DNABERT_SETUP = """
import torch
from pipeline.core.config import EncoderConfig
from pipeline.models.dnabert_s.checkpoint import load_dnabert_s
"""
CLASSIFIER_SETUP = """
import torch
from pipeline.classify.mlp import load_classifier
"""


def esm_probe(path: Path) -> dict:
    call = f"load_esm2(EncoderConfig({str(path)!r}, attention='sdpa'), 'cpu', allow_download=False)"
    return memory_probe(ESM_SETUP, call, ceiling_mb=CEILING_MB)


def dnabert_probe(path: Path) -> dict:
    call = f"load_dnabert_s(EncoderConfig({str(path)!r}, attention='sdpa'), 'cpu')"
    return memory_probe(DNABERT_SETUP, call, ceiling_mb=CEILING_MB)


def classifier_probe(path: Path) -> dict:
    return memory_probe(CLASSIFIER_SETUP, f"load_classifier({str(path)!r})", ceiling_mb=CEILING_MB)


def assert_refused(result: dict, *words: str) -> None:
    assert result["error"] == "ModelLoadError", result
    for word in words:
        assert word in result["message"], result


def expanded(*shape: int) -> torch.Tensor:
    """A tensor of ``shape`` backed by one float: ``torch.save`` stores 4 bytes for it."""
    return torch.zeros(1).expand(*shape)


def deflate_archive(path: Path) -> Path:
    """Rewrite a torch zip archive with every member deflated: a zip bomb torch.load would inflate."""
    with zipfile.ZipFile(path) as src:
        members = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in members:
            dst.writestr(name, data)
    return path


# ---------------------------------------------------------------- ESM-2 (fair-esm checkpoints)


def fair_esm_file(path: Path, layers: int, dim: int, heads: int, weights: dict[str, torch.Tensor]) -> Path:
    cfg = argparse.Namespace(
        encoder_layers=layers, encoder_embed_dim=dim, encoder_attention_heads=heads, token_dropout=True
    )
    torch.save({"model": weights, "cfg": {"model": cfg}}, path)
    return path


def esm_shapes(layers: int, dim: int, heads: int) -> dict[str, torch.Size]:
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    with torch.device("meta"):
        model = ESM2(layers, dim, heads, alphabet=Alphabet.from_architecture("ESM-1b"))
    return {k: v.shape for k, v in model.state_dict().items()}


def test_esm_config_larger_than_its_tensors(tmp_path: Path) -> None:
    """The issue's case: ~1.4 KB, config 5 layers x 2048, one tiny tensor."""
    weights = {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 4)}
    path = fair_esm_file(tmp_path / "esm_5x2048.pt", 5, 2048, 16, weights)
    assert path.stat().st_size < 4096
    assert_refused(esm_probe(path), str(path))


def test_esm_known_size_without_its_tensors(tmp_path: Path) -> None:
    weights = {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 4)}
    assert_refused(esm_probe(fair_esm_file(tmp_path / "esm_3b.pt", 36, 2560, 40, weights)))


def test_esm_config_beyond_every_known_size(tmp_path: Path) -> None:
    path = fair_esm_file(tmp_path / "esm_huge.pt", 200, 16384, 64, {})
    assert_refused(esm_probe(path), "larger than the largest ESM-2")


@pytest.mark.parametrize(
    ("layers", "dim", "heads"), [(-1, 64, 4), (2, 66, 4), (0, 64, 4), (2, 64, 0), (2, "x", 4)]
)
def test_esm_config_that_is_no_architecture(tmp_path: Path, layers, dim, heads) -> None:
    path = fair_esm_file(tmp_path / "esm_bad_cfg.pt", layers, dim, heads, {})
    assert_refused(esm_probe(path))


def test_esm_expanded_tensors_of_the_declared_shapes(tmp_path: Path) -> None:
    """Every key and shape right, but each tensor is a stride-0 view of one float: a tiny file
    whose shapes pass a key/shape comparison and would still be materialised at full size."""
    shapes = esm_shapes(5, 2048, 16)
    weights = {f"encoder.sentence_encoder.{k}": expanded(*s) for k, s in shapes.items()}
    path = fair_esm_file(tmp_path / "esm_expanded.pt", 5, 2048, 16, weights)
    assert path.stat().st_size < 200_000
    assert_refused(esm_probe(path), "bytes")


def test_esm_deflated_archive(tmp_path: Path) -> None:
    """A genuine-looking checkpoint whose members are deflated: 120 MB of zeros in a small file."""
    weights = {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 1_000_000)}
    path = deflate_archive(fair_esm_file(tmp_path / "esm_deflated.pt", 2, 64, 4, weights))
    assert path.stat().st_size < 1_000_000
    assert_refused(esm_probe(path), "compressed")


def test_esm_control_genuine_checkpoint_loads_under_the_ceiling(tmp_path: Path) -> None:
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    model = ESM2(num_layers=2, embed_dim=64, attention_heads=4, alphabet=Alphabet.from_architecture("ESM-1b"))
    path = write_fair_esm_checkpoint(model, tmp_path / "esm2_t2_tiny.pt")
    assert esm_probe(path)["error"] is None


# ---------------------------------------------------------------- DNABERT-S (Hugging Face directories)


def dnabert_dir(path: Path, cfg: dict, state: dict[str, torch.Tensor], fmt: str = "safetensors") -> Path:
    if fmt == "bin":  # written here: the fixture's writer would make expanded tensors contiguous
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(cfg))
        (path / "tokenizer.json").write_text(tokenizer_json())
        torch.save(state, path / "pytorch_model.bin")
        return path
    return write_checkpoint(path, cfg, state, fmt=fmt)


def test_dnabert_config_larger_than_its_tensors(tmp_path: Path) -> None:
    cfg = config_dict(hidden=4096, layers=8, heads=16, intermediate=16384)
    path = dnabert_dir(tmp_path / "big", cfg, {"embeddings.word_embeddings.weight": torch.zeros(40, 4)})
    assert_refused(dnabert_probe(path))


def test_dnabert_config_beyond_the_known_model(tmp_path: Path) -> None:
    cfg = config_dict(hidden=16384, layers=48, heads=64, intermediate=65536, vocab=1_000_000)
    path = dnabert_dir(tmp_path / "huge", cfg, {})
    assert_refused(dnabert_probe(path), "larger than DNABERT-S")


def test_dnabert_expanded_tensors_of_the_declared_shapes(tmp_path: Path) -> None:
    """The real DNABERT-S size (117M parameters, 470 MB in fp32), every tensor a stride-0 view."""
    cfg = config_dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=4096)
    meta_state = {}
    with torch.device("meta"):
        meta_state = state_dict_for(cfg)
    state = {k: expanded(*v.shape) for k, v in meta_state.items()}
    path = dnabert_dir(tmp_path / "expanded", cfg, state, fmt="bin")
    assert_refused(dnabert_probe(path), "bytes")


def test_dnabert_deflated_archive(tmp_path: Path) -> None:
    cfg = config_dict()
    state = state_dict_for(cfg)
    state["embeddings.position_ids"] = torch.zeros(40_000_000, dtype=torch.int32)  # ignored key, 160 MB
    path = dnabert_dir(tmp_path / "deflated", cfg, state, fmt="bin")
    deflate_archive(path / "pytorch_model.bin")
    assert_refused(dnabert_probe(path), "compressed")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_dnabert_control_genuine_checkpoint_loads_under_the_ceiling(tmp_path: Path, fmt: str) -> None:
    cfg = config_dict()
    path = write_checkpoint(tmp_path / fmt, cfg, state_dict_for(cfg), fmt=fmt)
    assert dnabert_probe(path)["error"] is None


# ---------------------------------------------------------------- the MLP classifier (.pth)

WIDE = 8000


def classifier_state(input_dim: int, hidden: int, make) -> dict[str, torch.Tensor]:
    return {
        "hidden_layer.weight": make(hidden, input_dim),
        "hidden_layer.bias": make(hidden),
        "bn1.weight": make(hidden),
        "bn1.bias": make(hidden),
        "bn1.running_mean": make(hidden),
        "bn1.running_var": make(hidden),
        "output_layer.weight": make(2, hidden),
        "output_layer.bias": make(2),
    }


def test_classifier_state_dict_declaring_8000_by_8000(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(classifier_state(WIDE, WIDE, expanded), path)
    assert path.stat().st_size < 4096
    assert_refused(classifier_probe(path), str(path))


def test_classifier_pickled_module_declaring_8000_by_8000(tmp_path: Path) -> None:
    """The original format: a whole pickled ``__main__.MLPClassifier`` whose layers are views."""
    from torch import nn

    MLPClassifier = type("MLPClassifier", (nn.Module,), {"__module__": "__main__"})  # noqa: N806
    module = MLPClassifier()
    module.hidden_layer = nn.Linear(1, 1)
    module.bn1 = nn.BatchNorm1d(1)
    module.output_layer = nn.Linear(1, 1)
    module.dropout = nn.Dropout(0.5)
    state = classifier_state(WIDE, WIDE, expanded)
    for key, value in state.items():
        layer, name = key.split(".")
        target = getattr(module, layer)
        if name in target._parameters:
            target._parameters[name] = nn.Parameter(value, requires_grad=False)
        else:
            target._buffers[name] = value
    import __main__

    __main__.MLPClassifier = MLPClassifier
    path = tmp_path / "500_model.pth"
    try:
        torch.save(module, path)
    finally:
        delattr(__main__, "MLPClassifier")
    assert path.stat().st_size < 8192
    assert_refused(classifier_probe(path), str(path))


def test_classifier_deflated_archive(tmp_path: Path) -> None:
    path = tmp_path / "deflated.pth"
    torch.save(classifier_state(3328 * 20, 512, torch.zeros), path)  # 136 MB of weights
    deflate_archive(path)
    assert path.stat().st_size < 2_000_000
    assert_refused(classifier_probe(path), "compressed")


def test_classifier_control_published_size_loads_under_the_ceiling(tmp_path: Path) -> None:
    path = tmp_path / "300_model.pth"
    torch.save(classifier_state(3328, 512, torch.randn), path)
    assert classifier_probe(path)["error"] is None
