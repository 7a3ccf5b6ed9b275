"""``virnucpro train`` as an application: prepare and embed the labelled inputs (or reuse embedded
run directories), train the MLP (`pipeline.classify.train`) and save it with its metrics."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classify.mlp import save_classifier
from pipeline.classify.train import TrainConfig, load_features, train
from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import ConfigError, InputError
from pipeline.run.predict import embed_run


@dataclass(frozen=True)
class TrainRunConfig:
    """``virnucpro train``: labelled inputs -> prepare + embed (both models) -> train -> save.

    Attributes:
        viral / other: FASTA files (each is prepared and embedded into ``output_dir/viral`` and
            ``output_dir/other``), or directories of a previous predict/train run holding
            ``frames.parquet`` and ``embeddings/`` (reused as they are).
        output_dir: where the embedding runs, ``classifier.safetensors`` and ``train_metrics.json`` go.
        predict: the embedding settings (models, precision, chunk size, GPUs); its ``input_path``
            and ``classifier`` are ignored.
        train: hyper-parameters.
    """

    viral: tuple[Path, ...]
    other: tuple[Path, ...]
    output_dir: Path
    predict: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    model_name: str = "classifier.safetensors"


def train_from_inputs(cfg: TrainRunConfig, settings: Any) -> dict[str, Any]:
    """Embed (or reuse) the labelled inputs, train, save; returns a JSON-ready summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    dims: set[tuple[int, int]] = set()
    sources = []
    t0 = time.perf_counter()
    for label, name, inputs in ((1, "viral", cfg.viral), (0, "other", cfg.other)):
        if not inputs:
            raise ConfigError(f"no {name} inputs; give at least one --{name} FASTA or run directory")
        for k, src in enumerate(inputs):
            src = Path(src)
            if src.is_dir():
                run_dir = src
            elif src.is_file():
                run_dir = out / f"{name}-{k}"
                embed_run(replace(cfg.predict, input_path=src, output_dir=run_dir), settings)
            else:
                raise InputError(f"--{name} {src} is neither a FASTA file nor a run directory")
            feats, d_dna, d_prot = load_features(run_dir)
            dims.add((d_dna, d_prot))
            parts.append(feats)
            labels.append(np.full(len(feats), label, dtype=np.int64))
            sources.append({"label": name, "input": str(src), "run_dir": str(run_dir), "frames": len(feats)})
    if len(dims) != 1:
        raise InputError(
            f"inputs were embedded with different models (widths {sorted(dims)}); "
            "embed every input with the same --esm-model and --dnabert-model"
        )
    d_dna, d_prot = dims.pop()
    embed_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = train(np.concatenate(parts), np.concatenate(labels), cfg.train)
    train_seconds = time.perf_counter() - t1
    models = {"dnabert-s": cfg.predict.dnabert.model, "esm2": cfg.predict.esm.model}
    path = save_classifier(
        result.model,
        out / cfg.model_name,
        dna_dim=d_dna,
        protein_dim=d_prot,
        models=models,
        chunk_size=cfg.predict.chunk_size,
        extra={
            "metrics": result.metrics,
            "best_epoch": result.best_epoch,
            "n_train": result.n_train,
            "n_val": result.n_val,
            "train_config": asdict(cfg.train),
        },
    )
    summary = {
        "classifier": str(path),
        "metrics": result.metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "inputs": sources,
        "embed_seconds": embed_seconds,
        "train_seconds": train_seconds,
        "history": result.history,
    }
    atomic_write_text(out / "train_metrics.json", json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["TrainRunConfig", "train_from_inputs"]
