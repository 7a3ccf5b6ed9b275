"""``virnucpro train``: train the VirNucPro MLP on labelled viral / other sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline.cli.predict import build_predict_config, embedding_options
from pipeline.core.config import Settings

_PATH = click.Path(exists=True, path_type=Path)


@click.command("train")
@click.option(
    "--viral",
    multiple=True,
    required=True,
    type=_PATH,
    help="Viral examples (label 1): a FASTA file, or a directory of an earlier predict/train "
    "run that holds frames.parquet and embeddings/. Repeatable.",
)
@click.option(
    "--other",
    multiple=True,
    required=True,
    type=_PATH,
    help="Non-viral examples (label 0), same forms as --viral. Repeatable.",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory: classifier.safetensors, train_metrics.json and the embedding runs.",
)
@click.option("--epochs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=2))
@click.option(
    "--lr",
    default=2e-4,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="SGD learning rate (momentum 0.9, x0.85 every 10 epochs).",
)
@click.option(
    "--patience",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Stop after this many epochs without a lower held-out loss.",
)
@click.option(
    "--val-fraction",
    default=0.1,
    show_default=True,
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Share of frames held out for early stopping and the reported metrics.",
)
@click.option("--seed", default=42, show_default=True, type=int)
@embedding_options
@click.pass_context
def command(
    ctx: click.Context,
    viral: tuple[Path, ...],
    other: tuple[Path, ...],
    out_dir: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    val_fraction: float,
    seed: int,
    **options: Any,
) -> None:
    """Embed labelled inputs with DNABERT-S and ESM-2 and train the MLP classifier as the original
    train.py does; saves OUT/classifier.safetensors (usable as `predict --classifier`)."""
    from pipeline.classify.train import TrainConfig
    from pipeline.run.train import TrainRunConfig, train_from_inputs

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    predict_cfg = build_predict_config(None, out_dir, classifier=None, settings=settings, **options)
    cfg = TrainRunConfig(
        viral=viral,
        other=other,
        output_dir=out_dir,
        predict=predict_cfg,
        train=TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            val_fraction=val_fraction,
            seed=seed,
            device=f"cuda:{predict_cfg.gpus[0]}" if predict_cfg.gpus else "cpu",
        ),
    )
    if options["demo"]:
        click.echo(
            "DEMO: random-weight encoders; the trained classifier is NOT biologically meaningful", err=True
        )
    summary = train_from_inputs(cfg, settings)
    metrics = summary["metrics"]
    click.echo(
        f"trained on {summary['n_train']} frames, held out {summary['n_val']}; best epoch "
        f"{summary['best_epoch']} of {summary['epochs_run']}"
        + (" (early stop)" if summary["stopped_early"] else "")
    )
    click.echo("held-out " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    click.echo(f"classifier: {summary['classifier']}")
    click.echo(f"metrics: {Path(out_dir) / 'train_metrics.json'}")
