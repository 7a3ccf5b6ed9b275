"""``virnucpro predict INPUT -o OUT``: the whole pipeline, original-format outputs and a run record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.core.config import (
    ATTENTION_BACKENDS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DNABERT_MODEL,
    DEFAULT_ESM_MODEL,
    DEFAULT_GPU_PRECISION,
    PRECISIONS,
    PredictConfig,
    Settings,
    is_random_classifier,
    parse_gpus,
)


def embedding_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by predict and train: models, devices, numerics, resume, demo."""
    options = [
        click.option(
            "--chunk-size",
            default=DEFAULT_CHUNK_SIZE,
            show_default=True,
            type=click.IntRange(min=3),
            help="Chunk length in bp (300 or 500 for the published classifiers).",
        ),
        click.option(
            "--esm-model",
            default=DEFAULT_ESM_MODEL,
            show_default=True,
            help="fair-esm model name, local fair-esm checkpoint, or random:<fair-esm name>.",
        ),
        click.option(
            "--dnabert-model",
            default=DEFAULT_DNABERT_MODEL,
            show_default=True,
            help="Hugging Face id or local DNABERT-S directory, or random:dnabert-s[-tiny].",
        ),
        click.option(
            "--gpus",
            default=None,
            metavar="LIST",
            help="GPU indices, one worker process each, e.g. 0,1,2,3. Default: CPU.",
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default=None,
            help=f"Embedding precision. Default: {DEFAULT_GPU_PRECISION} on GPU, fp32 on CPU. fp8: ESM-2's "
            "MLP in FP8 (Ada/Hopper GPUs, the fp8 extra), DNABERT-S in bf16.",
        ),
        click.option(
            "--attention",
            type=click.Choice(ATTENTION_BACKENDS),
            default="auto",
            show_default=True,
            help="Attention backend; auto picks the fastest correct one for the device.",
        ),
        click.option(
            "--compile",
            "compile_",
            is_flag=True,
            help="torch.compile the layer function (off when VIRNUCPRO_DISABLE_COMPILE=1).",
        ),
        click.option(
            "--resume", is_flag=True, help="Continue an interrupted run in the same output directory."
        ),
        click.option(
            "--demo",
            is_flag=True,
            help="Tiny random-weight models and a random classifier: runs offline on CPU in "
            "seconds; results are NOT biologically meaningful.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_predict_config(
    input_path: Path | None,
    out_dir: Path,
    *,
    chunk_size: int,
    esm_model: str,
    dnabert_model: str,
    classifier: str | None,
    gpus: str | None,
    precision: str | None,
    attention: str,
    compile_: bool,
    resume: bool,
    demo: bool,
    settings: Settings,
    keep_embeddings: bool = False,
) -> PredictConfig:
    """Options -> `PredictConfig` (built by `pipeline.run.predict.make_predict_config`)."""
    from pipeline.run.predict import make_predict_config

    gpu_list = parse_gpus(gpus)
    return make_predict_config(
        input_path if input_path is not None else Path(),
        out_dir,
        settings,
        chunk_size=chunk_size,
        esm_model=esm_model,
        dnabert_model=dnabert_model,
        classifier=classifier or "random",
        precision=precision or (DEFAULT_GPU_PRECISION if gpu_list else "fp32"),
        attention=attention,
        compile_=compile_,
        gpus=gpu_list,
        resume=resume,
        demo=demo,
        progress=settings.progress,
        keep_embeddings=keep_embeddings,
    )


@click.command("predict")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (prediction_results.txt, prediction_results_highestscore.csv, "
    "record_summary.tsv, run_record.json, and the intermediate files).",
)
@click.option(
    "--classifier",
    default=None,
    metavar="PATH|random",
    help="Original VirNucPro 300_model.pth/500_model.pth, a .safetensors file from "
    "`virnucpro train`, or 'random' (meaningless scores). Required unless --demo.",
)
@click.option(
    "--keep-embeddings",
    is_flag=True,
    help="Also write both models' pooled embeddings (float32) to OUT/embeddings/; by default the "
    "classifier runs on the GPU right after the embeddings and they are not written.",
)
@embedding_options
@click.pass_context
def command(
    ctx: click.Context, input_path: Path, out_dir: Path, classifier: str | None, **options: Any
) -> None:
    """Identify viral sequences in INPUT (FASTA, plain or gzip).

    Writes OUT/prediction_results.txt (per frame) and OUT/prediction_results_highestscore.csv
    (per chunk) in the original VirNucPro formats, OUT/record_summary.tsv (per input record) and
    OUT/run_record.json (timings and settings).
    """
    from pipeline.core.paths import run_lock
    from pipeline.run.predict import DEMO_NOTE, run_predict

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    if classifier is None and not options["demo"]:
        raise click.UsageError("give --classifier (e.g. 500_model.pth for --chunk-size 500), or --demo")
    cfg = build_predict_config(input_path, out_dir, classifier=classifier, settings=settings, **options)
    if not options["demo"] and is_random_classifier(cfg.classifier):
        click.echo("warning: --classifier random gives meaningless scores", err=True)
    with run_lock(out_dir):  # one run per output directory: a second one is refused at once (exit 11)
        record = run_predict(cfg, settings)
    counts = record["counts"]
    if counts["frames"] == 0:
        click.echo(
            "no frame survived six-frame translation (every frame has a stop codon, or the "
            "sequences are shorter than a codon): the outputs hold headers only",
            err=True,
        )
    click.echo(
        f"{counts['records']} records, {counts['chunks']} chunks scored "
        f"({counts['viral_chunks']} viral), {counts['frames']} frames"
    )
    for name, path in record["outputs"].items():
        click.echo(f"  {name}: {path}")
    click.echo(f"  run record: {Path(out_dir) / 'run_record.json'}")
    if options["demo"]:
        click.echo(DEMO_NOTE, err=True)
