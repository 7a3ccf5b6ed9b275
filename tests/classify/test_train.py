"""Training the MLP on arrays, the metrics, and the saved classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.classify.mlp import load_classifier
from pipeline.classify.train import TrainConfig, binary_metrics, split_indices, train
from pipeline.core.errors import ConfigError, InputError


def _separable(n: int = 400, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :4] += np.where(y[:, None] == 1, 2.0, -2.0)  # classes differ on four columns
    return x, y


def test_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1])
    m = binary_metrics(y, p)
    # predictions 1,1,0,1,0,0: tp 2, fp 1, fn 1, tn 2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # positive/negative pairs ranked correctly: 0.9 > all 3, 0.6 > 0.2, 0.1 (not 0.7), 0.4 > 0.2, 0.1
    assert m["auroc"] == pytest.approx(7 / 9)


def test_metrics_ties_and_degenerate_cases() -> None:
    m = binary_metrics(np.array([1, 0]), np.array([0.5, 0.5]))
    assert m["auroc"] == pytest.approx(0.5)  # a tie counts one half
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0  # 0.5 is not > 0.5
    assert math.isnan(binary_metrics(np.array([1, 1]), np.array([0.2, 0.9]))["auroc"])


def test_split_is_seeded_and_ten_percent() -> None:
    tr, va = split_indices(105, 0.1, 42)
    assert len(va) == 10 and len(tr) == 95 and sorted(tr + va) == list(range(105))
    assert split_indices(105, 0.1, 42) == (tr, va)
    assert split_indices(105, 0.1, 43) != (tr, va)


def test_defaults_follow_the_original() -> None:
    cfg = TrainConfig()
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.epochs, cfg.patience, cfg.val_fraction) == (
        32,
        2e-4,
        0.9,
        200,
        5,
        0.1,
    )
    assert (cfg.lr_step, cfg.lr_gamma) == (10, 0.85)


def test_trains_to_high_accuracy_and_saves(tmp_path) -> None:
    torch.set_num_threads(1)
    x, y = _separable()
    result = train(x, y, TrainConfig(epochs=25, seed=1))
    assert result.n_val == 40 and result.n_train == 360
    assert result.metrics["accuracy"] >= 0.95
    assert result.metrics["auroc"] >= 0.98
    assert not result.model.training
    # the reported metrics belong to the restored best epoch
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.metrics["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)

    from pipeline.classify.mlp import save_classifier

    path = save_classifier(result.model, tmp_path / "clf.safetensors", dna_dim=6, protein_dim=10)
    loaded = load_classifier(path, 16)
    xt, yt = _separable(200, seed=9)
    prob = loaded.predict_proba(torch.from_numpy(xt))[:, 1].numpy()
    assert binary_metrics(yt, prob)["accuracy"] >= 0.95


def test_early_stopping_stops() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    y = rng.integers(0, 2, 120)  # pure noise: held-out loss stops improving
    result = train(x, y, TrainConfig(epochs=200, patience=2, lr=0.05, seed=0))
    assert result.stopped_early
    assert len(result.history) < 200
    assert len(result.history) - result.best_epoch == 2


def test_bad_inputs() -> None:
    x, y = _separable(40)
    with pytest.raises(InputError, match="both"):
        train(x, np.ones(40, dtype=int))
    with pytest.raises(InputError, match="0 \\(other\\) or 1"):
        train(x, np.full(40, 2))
    with pytest.raises(InputError):
        train(x[:, :, None], y)
    with pytest.raises(ConfigError):
        TrainConfig(val_fraction=1.5)


@pytest.mark.slow
def test_train_cli_demo_models_end_to_end(tmp_path) -> None:
    """Labelled FASTA -> prepare + embed (tiny random encoders) -> train -> a classifier that
    `predict` accepts. Viral and other inputs differ in composition (ATG vs GCC repeats), which
    even random encoders separate."""
    import itertools
    import json

    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.core.config import Settings

    torch.set_num_threads(1)
    sense = [
        "".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in {"TAA", "TAG", "TGA"}
    ]
    rng = np.random.default_rng(0)

    def records(prefix: str, repeat: str) -> str:
        return "".join(f">{prefix}{i}\n{repeat * 30}{''.join(rng.choice(sense, 20))}\n" for i in range(10))

    viral = tmp_path / "viral.fa"
    other = tmp_path / "other.fa"
    viral.write_text(records("v", "ATG"))
    other.write_text(records("o", "GCC"))
    out = tmp_path / "train"
    args = [
        "train",
        "--viral",
        str(viral),
        "--other",
        str(other),
        "-o",
        str(out),
        "--demo",
        "--chunk-size",
        "150",
        "--epochs",
        "15",
        "--seed",
        "1",
    ]
    result = CliRunner().invoke(cli, args, obj=Settings(progress=False), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_metrics.json").read_text())
    assert summary["n_train"] + summary["n_val"] == sum(i["frames"] for i in summary["inputs"])
    assert set(summary["metrics"]) >= {"accuracy", "precision", "recall", "f1", "auroc"}
    clf = load_classifier(out / "classifier.safetensors")
    assert clf.meta.models == {"dnabert-s": "random:dnabert-s-tiny", "esm2": "random:esm2_t6_8M_UR50D"}
    assert clf.meta.chunk_size == 150
    assert clf.meta.dna_dim + clf.meta.protein_dim == clf.input_dim

    # an embedded run directory can be reused as a training input as it is
    again = CliRunner().invoke(
        cli,
        [
            "train",
            "--viral",
            str(out / "viral-0"),
            "--other",
            str(out / "other-0"),
            "-o",
            str(tmp_path / "again"),
            "--demo",
            "--chunk-size",
            "150",
            "--epochs",
            "2",
        ],
        obj=Settings(progress=False),
        catch_exceptions=False,
    )
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "again" / "viral-0").exists()
    # A run embedded by the multi-GPU coordinator has its workers' logs beside the shard directories:
    # the run directory is still reusable, and a shard directory that is not an output is still refused.
    from pipeline.classify.train import load_features
    from pipeline.core.errors import OutputIntegrityError

    run_dir = out / "viral-0"
    frames_before = load_features(run_dir)[0].shape[0]
    for kind in ("dnabert-s", "esm2"):
        (run_dir / "embeddings" / kind / "logs").mkdir()
        (run_dir / "embeddings" / kind / "logs" / "worker-0.log").write_text("log\n")
    assert load_features(run_dir)[0].shape[0] == frames_before == summary["inputs"][0]["frames"]
    (run_dir / "embeddings" / "esm2" / "shard-999").mkdir()
    with pytest.raises(OutputIntegrityError, match="shard-999"):
        load_features(run_dir)
