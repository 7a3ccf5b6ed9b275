"""The MLP, the safe loader for the original whole-module pickles, and the safetensors format."""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classify.mlp import (
    FORMAT,
    MLPClassifier,
    load_classifier,
    random_classifier,
    save_classifier,
)
from pipeline.core.errors import ModelLoadError


class _OriginalMLP(nn.Module):
    """A stand-in written like the original training script's class (same attribute names)."""

    def __init__(self, input_dim: int, hidden_dim: int, num_class: int) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.output_layer(self.dropout(F.relu(self.bn1(self.hidden_layer(x)))))


def _save_as(module_name: str, model: nn.Module, path) -> None:
    """torch.save(model) with its class pickled under ``<module_name>.MLPClassifier``."""
    fake = types.ModuleType(module_name) if module_name != "__main__" else sys.modules["__main__"]
    cls = type("MLPClassifier", (_OriginalMLP,), {"__module__": module_name})
    had = hasattr(fake, "MLPClassifier")
    old = getattr(fake, "MLPClassifier", None)
    fake.MLPClassifier = cls
    registered = module_name not in sys.modules
    if registered:
        sys.modules[module_name] = fake
    try:
        model.__class__ = cls
        torch.save(model, path)
    finally:
        model.__class__ = _OriginalMLP
        if had:
            fake.MLPClassifier = old
        else:
            delattr(fake, "MLPClassifier")
        if registered:
            del sys.modules[module_name]


def _trained_original(input_dim: int = 12, hidden: int = 8, seed: int = 3) -> _OriginalMLP:
    torch.manual_seed(seed)
    model = _OriginalMLP(input_dim, hidden, 2)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, input_dim) * 3 + 1)
    return model.eval()


def test_architecture_matches_the_original() -> None:
    model = MLPClassifier(3328)
    assert [name for name, _ in model.named_children()] == ["hidden_layer", "bn1", "output_layer", "dropout"]
    assert model.hidden_layer.in_features == 3328 and model.hidden_layer.out_features == 512
    assert isinstance(model.bn1, nn.BatchNorm1d) and model.bn1.num_features == 512
    assert model.output_layer.out_features == 2
    assert model.dropout.p == 0.5
    assert model(torch.randn(4, 3328)).shape == (4, 2)


@pytest.mark.parametrize("module_name", ["__main__", "units", "train"])
def test_original_pickle_loads_with_identical_outputs(tmp_path, module_name) -> None:
    original = _trained_original()
    path = tmp_path / "500_model.pth"
    _save_as(module_name, original, path)
    loaded = load_classifier(path, input_dim=12)
    assert isinstance(loaded, MLPClassifier)
    assert not loaded.training
    assert loaded.meta.source == "virnucpro-pth"
    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = torch.softmax(original(x), dim=1)
    got = loaded.predict_proba(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # running statistics came along (eval-mode BatchNorm depends on them)
    torch.testing.assert_close(loaded.bn1.running_mean, original.bn1.running_mean, rtol=0, atol=0)


def test_original_pickle_wrong_width_is_refused(tmp_path) -> None:
    path = tmp_path / "300_model.pth"
    _save_as("__main__", _trained_original(input_dim=12), path)
    with pytest.raises(ModelLoadError, match="12-wide"):
        load_classifier(path, input_dim=3328)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"hidden_layer.weight": _Evil(str(marker))}, path)
    with pytest.raises(ModelLoadError, match="refused"):
        load_classifier(path, input_dim=12)
    assert not marker.exists()


def test_malicious_object_inside_the_module_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned2"
    model = _trained_original()
    model.extra = _Evil(str(marker))  # travels in the pickled __dict__
    path = tmp_path / "evil_module.pth"
    _save_as("__main__", model, path)
    with pytest.raises(ModelLoadError, match="refused"):
        load_classifier(path)
    assert not marker.exists()


def test_other_classes_are_refused(tmp_path) -> None:
    path = tmp_path / "seq.pth"
    torch.save(nn.Sequential(nn.Linear(4, 2)), path)
    with pytest.raises(ModelLoadError):
        load_classifier(path)
    path2 = tmp_path / "other_name.pth"
    _save_as("somewhere_else", _trained_original(), path2)
    with pytest.raises(ModelLoadError, match="refused"):
        load_classifier(path2)


def test_plain_state_dict_pth_is_accepted(tmp_path) -> None:
    original = _trained_original()
    path = tmp_path / "state.pth"
    torch.save(original.state_dict(), path)
    loaded = load_classifier(path, 12)
    x = torch.randn(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)


def test_safetensors_roundtrip_with_header(tmp_path) -> None:
    model = random_classifier(10, seed=5)
    path = save_classifier(
        model,
        tmp_path / "clf.safetensors",
        dna_dim=4,
        protein_dim=6,
        models={"dnabert-s": "random:dnabert-s-tiny", "esm2": "random:esm2_t6_8M_UR50D"},
        chunk_size=300,
        extra={"metrics": {"accuracy": 0.9}},
    )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    assert header["format"] == FORMAT
    meta = json.loads(header["meta"])
    assert meta["dna_dim"] == 4 and meta["protein_dim"] == 6 and meta["chunk_size"] == 300
    loaded = load_classifier(path, 10)
    assert loaded.meta.source == "safetensors"
    assert loaded.meta.models["esm2"] == "random:esm2_t6_8M_UR50D"
    assert loaded.meta.chunk_size == 300
    x = torch.randn(7, 10)
    torch.testing.assert_close(loaded.predict_proba(x), model.predict_proba(x), rtol=0, atol=0)
    with pytest.raises(ModelLoadError, match="10-wide"):
        load_classifier(path, 11)


def test_foreign_safetensors_and_garbage_are_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelLoadError, match="not a VirNucPro classifier"):
        load_classifier(foreign)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelLoadError):
        load_classifier(junk)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_classifier(tmp_path / "missing.pth")


def test_random_classifier_is_seeded() -> None:
    a = load_classifier("random", 6)
    b = load_classifier("random:0", 6)
    c = load_classifier("random:1", 6)
    x = torch.randn(3, 6)
    torch.testing.assert_close(a.predict_proba(x), b.predict_proba(x))
    assert not torch.allclose(a.predict_proba(x), c.predict_proba(x))
    assert not a.meta.meaningful
    with pytest.raises(ModelLoadError):
        load_classifier("random")


def test_predict_proba_is_softmax_in_eval_mode() -> None:
    model = random_classifier(6)
    model.train()
    x = torch.randn(4, 6)
    p = model.predict_proba(x)
    assert not model.training
    np.testing.assert_allclose(p.sum(dim=1).numpy(), np.ones(4), rtol=1e-6)
    # eval mode: dropout off, so two calls agree exactly
    torch.testing.assert_close(p, model.predict_proba(x), rtol=0, atol=0)
