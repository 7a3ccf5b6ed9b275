"""``virnucpro embed SHARD --kind esm2|dnabert-s -o DIR``: embed one shard on one device."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.config import (
    ATTENTION_BACKENDS,
    DEFAULT_DNABERT_MODEL,
    DEFAULT_ESM_MODEL,
    DEFAULT_GPU_PRECISION,
    PRECISIONS,
    Settings,
    encoder_precision,
)

_DEFAULT_MODELS = {"esm2": DEFAULT_ESM_MODEL, "dnabert-s": DEFAULT_DNABERT_MODEL}


@click.command("embed")
@click.argument("shard", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    required=True,
    type=click.Choice(sorted(_DEFAULT_MODELS)),
    help="Model kind: esm2 embeds the protein column, dnabert-s the nucleotide column.",
)
@click.option(
    "--model",
    "model_spec",
    default=None,
    help="Model specifier (fair-esm name, checkpoint path, HF id/dir, random:<name>); "
    f"default {DEFAULT_ESM_MODEL} / {DEFAULT_DNABERT_MODEL}.",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory for this shard's parts (must be empty unless --resume).",
)
@click.option(
    "--column",
    type=click.Choice(["nucleotide", "protein"]),
    default=None,
    help="Sequence column to embed (default: the kind's own).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help=f"Compute precision (default {DEFAULT_GPU_PRECISION} on CUDA, fp32 on CPU; fp8: ESM-2 only).",
)
@click.option(
    "--attention",
    type=click.Choice(ATTENTION_BACKENDS),
    default="auto",
    show_default=True,
    help="Attention backend.",
)
@click.option(
    "--compile/--no-compile",
    "use_compile",
    default=False,
    show_default=True,
    help="torch.compile the layer function (off when VIRNUCPRO_DISABLE_COMPILE is set).",
)
@click.option("--device", default=None, help="Torch device (cpu, cuda, cuda:1); default cuda when available.")
@click.option(
    "--token-budget",
    type=click.IntRange(min=16),
    default=None,
    help="Tokens per packed batch (default: VIRNUCPRO_TOKEN_BUDGET, else from model size and free memory).",
)
@click.option(
    "--part-size",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Sequences per output part (the unit of atomic writes and resume).",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=None,
    help="CPU tokenizer workers (default: VIRNUCPRO_NUM_WORKERS, else chosen from the shard size).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random: weights.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in DIR (skips verified parts).")
@click.pass_context
def command(
    ctx: click.Context,
    shard: Path,
    kind: str,
    model_spec: str | None,
    out_dir: Path,
    column: str | None,
    precision: str | None,
    attention: str,
    use_compile: bool,
    device: str | None,
    token_budget: int | None,
    part_size: int,
    num_workers: int | None,
    seed: int,
    resume: bool,
) -> None:
    """Embed one shard parquet file (columns id, nucleotide, protein) into pooled vectors.

    Exit code 75 means the run was stopped by SIGTERM/SIGINT after a complete part: rerun with
    --resume to finish it.
    """
    import torch

    from pipeline.core.config import EmbedConfig, EncoderConfig
    from pipeline.embed.runner import embed_shard

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = encoder_precision(
        kind, precision or (DEFAULT_GPU_PRECISION if device.startswith("cuda") else "fp32")
    )
    encoder = EncoderConfig(
        model=model_spec or _DEFAULT_MODELS[kind],
        precision=precision,
        attention=attention,
        compile=settings.compile_wanted(use_compile),
        seed=seed,
    )
    cfg = EmbedConfig(
        encoder=encoder,
        device=device,
        token_budget=token_budget if token_budget is not None else settings.token_budget,
        num_workers=num_workers if num_workers is not None else settings.num_workers,
        part_size=part_size,
        resume=resume,
        progress=settings.progress,
    )
    record = embed_shard(shard, column, kind, cfg, out_dir)
    stage = record["stages"][0]
    click.echo(
        f"embedded {stage['sequences']} sequences ({stage['tokens']} tokens, "
        f"{stage['parts_written']} parts written, {stage['parts_skipped']} reused) into {out_dir}: "
        f"{stage['tokens_per_s'] or 0:,.0f} tok/s, packing {100 * stage['packing_efficiency']:.1f}%, "
        f"backend {stage['backend']} on {stage['device']}"
    )
