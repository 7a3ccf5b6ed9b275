"""Everything checkable before embedding is checked before embedding: model specifiers, the
classifier specifier, and the classifier width against the models' widths (from the architecture
tables, no model built). A refusal leaves no embeddings behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.fa"
TINY_ESM = "random:esm2_t6_8M_UR50D"  # 320 wide
TINY_DNA = "random:dnabert-s-tiny"  # 64 wide


def _classifier(tmp_path: Path, width: int) -> Path:
    from pipeline.classify.mlp import random_classifier, save_classifier

    path = tmp_path / f"clf{width}.safetensors"
    save_classifier(random_classifier(width, seed=1), path)
    return path


CASES = {
    "classifier random:abc": [
        "--classifier",
        "random:abc",
        "--esm-model",
        TINY_ESM,
        "--dnabert-model",
        TINY_DNA,
    ],
    "classifier random:1.5": [
        "--classifier",
        "random:1.5",
        "--esm-model",
        TINY_ESM,
        "--dnabert-model",
        TINY_DNA,
    ],
    "unknown esm name": [
        "--classifier",
        "random",
        "--esm-model",
        "esm2_t99_nope_UR50D",
        "--dnabert-model",
        TINY_DNA,
    ],
    "unknown esm random": [
        "--classifier",
        "random",
        "--esm-model",
        "random:esm2_nope",
        "--dnabert-model",
        TINY_DNA,
    ],
    "esm not a file": [
        "--classifier",
        "random",
        "--esm-model",
        "/nonexistent/esm.pt",
        "--dnabert-model",
        TINY_DNA,
    ],
    "esm a text file": ["--classifier", "random", "--esm-model", "TEXT", "--dnabert-model", TINY_DNA],
    "unknown dnabert random": [
        "--classifier",
        "random",
        "--esm-model",
        TINY_ESM,
        "--dnabert-model",
        "random:huge",
    ],
    "classifier too narrow": [
        "--classifier",
        "CLF:100",
        "--esm-model",
        TINY_ESM,
        "--dnabert-model",
        TINY_DNA,
    ],
    "classifier for 3B": ["--classifier", "CLF:3328", "--esm-model", TINY_ESM, "--dnabert-model", TINY_DNA],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_before_embedding(tmp_path, capsys, name):
    args = list(CASES[name])
    for i, arg in enumerate(args):
        if arg.startswith("CLF:"):
            args[i] = str(_classifier(tmp_path, int(arg[4:])))
        elif arg == "TEXT":
            args[i] = str(tmp_path / "esm.pt")
            Path(args[i]).write_text("not a checkpoint\n")
    out = tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(["predict", str(DEMO), "-o", str(out), "--chunk-size", "300", *args])
    err = capsys.readouterr().err
    assert info.value.code == 4, err
    assert "Traceback" not in err
    assert not (out / "embeddings").exists(), "refused only after embedding"
    assert not (out / "chunked.fa").exists(), "refused only after prepare"
    del start


def test_the_right_width_passes_preflight(tmp_path):
    from pipeline.core.config import EncoderConfig, PredictConfig
    from pipeline.run.preflight import preflight_models

    clf = _classifier(tmp_path, 64 + 320)
    cfg = PredictConfig(
        input_path=DEMO,
        output_dir=tmp_path / "o",
        esm=EncoderConfig(TINY_ESM),
        dnabert=EncoderConfig(TINY_DNA),
        classifier=str(clf),
    )
    assert preflight_models(cfg) == 384


def test_local_esm_checkpoint_width_is_read_without_loading_the_weights(tmp_path):
    import torch
    from fixtures.esm2 import write_fair_esm_checkpoint

    from pipeline.models.esm2.checkpoint import _seeded_random
    from pipeline.run.preflight import esm_width

    path = write_fair_esm_checkpoint(
        _seeded_random("esm2_t6_8M_UR50D", 0, torch.device("cpu")), tmp_path / "e.pt"
    )
    assert esm_width(str(path)) == 320


def test_dag_prepare_step_refuses_before_writing(tmp_path, monkeypatch):
    from pipeline.core.errors import ModelLoadError
    from pipeline.run.steps import prepare_step

    monkeypatch.setenv("VIRNUCPRO_INPUT_ROOT", str(REPO))
    monkeypatch.setenv("VIRNUCPRO_OUTPUT_ROOT", str(tmp_path))
    params = {
        "input_path": str(DEMO),
        "esm_model": TINY_ESM,
        "dnabert_model": TINY_DNA,
        "gpu_slots": 0,
        "classifier": str(_classifier(tmp_path, 100)),
        "chunk_size": 300,
    }
    with pytest.raises(ModelLoadError, match="wide"):
        prepare_step(params, tmp_path / "run")
    assert not (tmp_path / "run" / "chunked.fa").exists()
