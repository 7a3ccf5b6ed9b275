"""ESM-2 model specifiers: fair-esm-format checkpoints (round trip through fair-esm's own loader),
the torch hub cache, the safe unpickler, and the registry."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.esm2 import write_fair_esm_checkpoint

from pipeline.core.config import KIND_COLUMN, EncoderConfig
from pipeline.core.errors import ConfigError, ModelLoadError
from pipeline.models.esm2 import PackedESM2, load_esm2
from pipeline.models.esm2.checkpoint import hub_checkpoint_path
from pipeline.models.registry import load_encoder

SEQS = ["MKTAYIAKQR", "GSHMLE", "W"]


class Exploit:
    """Unpickling this would call print(): a stand-in for arbitrary code in a malicious checkpoint."""

    def __reduce__(self):
        return (print, ("code ran during unpickling",))


def tiny_fair_esm(seed: int = 0):
    """A small ESM-2 architecture built by fair-esm itself (2 layers, 64 dims, 4 heads)."""
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers=2, embed_dim=64, attention_heads=4, alphabet=Alphabet.from_architecture("ESM-1b"))
    torch.nn.init.normal_(model.contact_head.regression.weight)
    return model.eval()


def pooled(model, seqs):
    alphabet = model.alphabet
    out = []
    with torch.inference_mode():
        for s in seqs:
            toks = torch.tensor([[alphabet.cls_idx, *alphabet.encode(s), alphabet.eos_idx]])
            rep = model(toks, repr_layers=[model.num_layers])["representations"][model.num_layers]
            out.append(rep[0, 1 : len(s) + 1].mean(0))
    return torch.stack(out)


def embed(model: PackedESM2, seqs):
    ids = [torch.from_numpy(model.tokenizer.encode(s)) for s in seqs]
    cu = torch.tensor([0, *np.cumsum([t.numel() for t in ids])], dtype=torch.int32)
    with torch.inference_mode():
        return model.embed_packed(torch.cat(ids), cu, max(t.numel() for t in ids))


@pytest.fixture()
def checkpoint(tmp_path) -> tuple[Path, torch.nn.Module]:
    # fair-esm picks the ESM-2 loader from the file stem, so the name must start with "esm2"
    src = tiny_fair_esm()
    path = write_fair_esm_checkpoint(src, tmp_path / "esm2_t2_tiny.pt")
    return path, src


def test_round_trip_with_fair_esm_loader(checkpoint):
    import esm

    path, src = checkpoint
    with torch.serialization.safe_globals([argparse.Namespace]):
        theirs, _ = esm.pretrained.load_model_and_alphabet_local(str(path))
    ours = load_esm2(EncoderConfig(str(path)), "cpu")
    assert (ours.num_layers, ours.embed_dim, ours.heads) == (2, 64, 4)
    assert ours.info.repr_layer == 2 and ours.info.hidden_size == 64
    state = theirs.state_dict()
    for key, value in ours.esm.state_dict().items():
        if not key.startswith("contact_head"):
            assert torch.equal(value, state[key]), key
    torch.testing.assert_close(embed(ours, SEQS), pooled(theirs.eval(), SEQS), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embed(ours, SEQS), pooled(src, SEQS), atol=1e-5, rtol=1e-5)


def test_checkpoint_without_regression_file(checkpoint):
    path, src = checkpoint
    path.with_name(path.stem + "-contact-regression.pt").unlink()
    ours = load_esm2(EncoderConfig(str(path)), "cpu")
    torch.testing.assert_close(embed(ours, SEQS), pooled(src, SEQS), atol=1e-5, rtol=1e-5)


def test_hub_cache_name(checkpoint, tmp_path):
    path, src = checkpoint
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        name = "esm2_t6_8M_UR50D"
        expected = hub_checkpoint_path(name)
        assert expected == tmp_path / "hub" / "checkpoints" / f"{name}.pt"
        with pytest.raises(ModelLoadError, match=str(expected)):
            load_esm2(EncoderConfig(name), "cpu", allow_download=False)
        expected.parent.mkdir(parents=True)
        shutil.copy(path, expected)  # the hub file's architecture comes from its cfg, not its name
        ours = load_esm2(EncoderConfig(name), "cpu", allow_download=False)
        torch.testing.assert_close(embed(ours, SEQS), pooled(src, SEQS), atol=1e-5, rtol=1e-5)
    finally:
        torch.hub.set_dir(old)


def test_unsafe_checkpoint_refused(tmp_path, capsys):
    path = tmp_path / "esm2_evil.pt"
    model = tiny_fair_esm()
    torch.save(
        {
            "model": model.state_dict(),
            "cfg": {"model": argparse.Namespace(encoder_layers=2)},
            "extra": Exploit(),
        },
        path,
    )
    with pytest.raises(ModelLoadError, match="refused"):
        load_esm2(EncoderConfig(str(path)), "cpu")
    assert "code ran" not in capsys.readouterr().out


def test_not_an_esm2_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ModelLoadError, match="not a fair-esm ESM-2 checkpoint"):
        load_esm2(EncoderConfig(str(path)), "cpu")


def test_checkpoint_with_wrong_weights(tmp_path):
    model = tiny_fair_esm()
    path = write_fair_esm_checkpoint(model, tmp_path / "esm2_bad.pt")
    data = torch.load(path, weights_only=False)
    data["cfg"]["model"].encoder_embed_dim = 128  # config no longer matches the tensors
    torch.save(data, path)
    with pytest.raises(ModelLoadError, match="do not match"):
        load_esm2(EncoderConfig(str(path)), "cpu")


def test_missing_path_or_name():
    with pytest.raises(ModelLoadError, match="neither a fair-esm model name"):
        load_esm2(EncoderConfig("/nonexistent/esm.pt"), "cpu")


def test_registry():
    assert KIND_COLUMN == {"esm2": "protein", "dnabert-s": "nucleotide"}
    model = load_encoder(
        "esm2", EncoderConfig("random:esm2_t6_8M_UR50D", compile=True), "cpu", disable_compile=True
    )
    assert isinstance(model, PackedESM2) and not model.compiled
    dna = load_encoder(
        "dnabert-s", EncoderConfig("random:dnabert-s-tiny", compile=True), "cpu", disable_compile=True
    )
    assert dna.info.kind == "dnabert-s"
    with pytest.raises(ConfigError, match="kind"):
        load_encoder("bert", EncoderConfig("random:esm2_t6_8M_UR50D"), "cpu")
