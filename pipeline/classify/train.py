"""Train the VirNucPro MLP the way the original ``train.py`` does, and save it in the project format.

Recipe (the original's): features = concat(DNABERT-S, ESM-2) per frame, label 1 = viral, 0 = other;
a seeded random 10 % of the frames is held out (the original uses the same held-out set for early
stopping and for the reported metrics); batch size 32, shuffled; cross-entropy; SGD lr 2e-4,
momentum 0.9; StepLR(step 10 epochs, gamma 0.85); up to 200 epochs; early stopping when the
held-out loss has not improved for 5 epochs. Two deliberate differences: the best weights are
really copied and restored (the original keeps a live reference to the state dict, so "restoring"
it keeps the last epoch's weights), and the model is saved whether or not early stopping fired.

`train` works on arrays (testable without any model); `pipeline.run.train.train_from_inputs` embeds
labelled FASTA files (or reuses run directories) and then calls it.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.classify.mlp import MLPClassifier
from pipeline.classify.scoring import frame_ids, join_positions
from pipeline.core.config import MODEL_KINDS
from pipeline.core.errors import ConfigError, InputError
from pipeline.embed.parts import open_embeddings, shard_dirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (defaults = the original train.py)."""

    epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-4
    momentum: float = 0.9
    lr_step: int = 10
    lr_gamma: float = 0.85
    patience: int = 5
    min_delta: float = 0.0
    val_fraction: float = 0.1
    seed: int = 42
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 2 (BatchNorm needs 2 rows per batch)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be between 0 and 1")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.patience < 1:
            raise ConfigError(f"patience={self.patience} must be >= 1")


@dataclass
class TrainResult:
    """The trained model (eval mode, best held-out loss weights) and what happened."""

    model: Any
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    n_train: int = 0
    n_val: int = 0


def binary_metrics(labels: np.ndarray, prob_virus: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (class 1 positive, prediction = P(virus) > 0.5, i.e. argmax
    with ties to class 0) and AUROC (Mann-Whitney with tied scores counted as one half).

    Precision/recall/F1 with an empty denominator are 0, as scikit-learn reports them; AUROC is NaN
    when only one class is present.
    """
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(prob_virus, dtype=np.float64)
    pred = (p > 0.5).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    accuracy = float((pred == y).mean()) if len(y) else math.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        auroc = math.nan
    else:
        ranks = _average_ranks(p)
        auroc = float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return {
        "accuracy": accuracy,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": auroc,
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # group boundaries of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded shuffle, then the first ``int(n * val_fraction)`` indices are held out (the original's
    split)."""
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    split = int(n * val_fraction)
    return indices[split:], indices[:split]


def train(
    features: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig | None = None,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train an `MLPClassifier`.

    Args:
        features: ``(N, D) float32``, DNA embedding columns first, then protein.
        labels: ``(N,)`` integers, 1 = viral, 0 = other.
        cfg: hyper-parameters.
        on_epoch: called with each epoch's row (epoch, lr, train_loss, val_loss, metrics).
    Returns:
        `TrainResult`; ``metrics`` are on the held-out set with the restored best weights.
    """
    cfg = cfg or TrainConfig()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise InputError(f"features must be (N, D) and labels (N,); got {x.shape} and {y.shape}")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise InputError(f"labels must be 0 (other) or 1 (viral); got {sorted(set(np.unique(y).tolist()))}")
    if len(set(y.tolist())) < 2:
        raise InputError("training needs both viral (1) and other (0) examples; only one class was given")
    if not np.isfinite(x).all():
        raise InputError("features contain NaN/Inf; re-embed in fp32 or bf16")
    train_idx, val_idx = split_indices(len(y), cfg.val_fraction, cfg.seed)
    if len(val_idx) < 2 or len(train_idx) < 2:
        raise InputError(
            f"{len(y)} examples are too few to hold out {cfg.val_fraction:.0%}; give more sequences"
        )

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = MLPClassifier(x.shape[1]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    xt = torch.from_numpy(x[train_idx]).to(device)
    yt = torch.from_numpy(y[train_idx]).to(device)
    xv = torch.from_numpy(x[val_idx]).to(device)
    yv = torch.from_numpy(y[val_idx]).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)

    def evaluate() -> tuple[float, np.ndarray]:
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            loss = float(F.cross_entropy(logits, yv))
            prob = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        return loss, prob

    history: list[dict[str, float]] = []
    best_loss = math.inf
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = 0
    bad_epochs = 0
    stopped = False
    n_train = len(train_idx)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=gen).to(device)
        total, batches = 0.0, 0
        for start in range(0, n_train, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            if len(batch) < 2:
                continue  # BatchNorm cannot normalise a single row in training mode
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        val_loss, prob = evaluate()
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": total / max(batches, 1),
            "val_loss": val_loss,
            **binary_metrics(y[val_idx], prob),
        }
        history.append(row)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, acc %.4f, auroc %.4f",
            epoch,
            row["train_loss"],
            val_loss,
            row["accuracy"],
            row["auroc"],
        )
        if on_epoch is not None:
            on_epoch(row)
        if val_loss < best_loss - cfg.min_delta:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                stopped = True
                break
        scheduler.step()
    model.load_state_dict(best_state)
    val_loss, prob = evaluate()
    metrics = {"val_loss": val_loss, **binary_metrics(y[val_idx], prob)}
    model = model.cpu().eval()
    return TrainResult(
        model=model,
        metrics=metrics,
        history=history,
        best_epoch=best_epoch,
        stopped_early=stopped,
        n_train=n_train,
        n_val=len(val_idx),
    )


# ---------------------------------------------------------------------------------------------
# from labelled inputs


def load_features(run_dir: str | Path) -> tuple[np.ndarray, int, int]:
    """Features of every frame of an embedded run directory, in ``frames.parquet`` order.

    Returns ``(features (N, D_dna + D_prot) float32, D_dna, D_prot)``; the join is by id.
    """
    root = Path(run_dir)
    frames = frame_ids(root)
    dirs = {kind: shard_dirs(root / "embeddings" / kind) for kind in (k.name for k in MODEL_KINDS)}
    if not dirs["dnabert-s"] or not dirs["esm2"]:
        raise InputError(f"{root} has no embeddings/dnabert-s and embeddings/esm2; embed it first")
    dna = open_embeddings(dirs["dnabert-s"])
    prot = open_embeddings(dirs["esm2"])
    d_dna, d_prot = int(dna.vectors.shape[1]), int(prot.vectors.shape[1])
    if not frames:
        return np.empty((0, d_dna + d_prot), np.float32), d_dna, d_prot
    dpos = join_positions(frames, list(dna.ids), "DNABERT-S")
    ppos = join_positions(frames, list(prot.ids), "ESM-2")
    feats = np.concatenate(
        [np.asarray(dna.vectors[dpos], dtype=np.float32), np.asarray(prot.vectors[ppos], dtype=np.float32)],
        axis=1,
    )
    return feats, d_dna, d_prot


__all__ = ["TrainConfig", "TrainResult", "binary_metrics", "load_features", "split_indices", "train"]
