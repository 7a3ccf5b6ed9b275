"""``virnucpro prepare INPUT -o OUT``: chunk and six-frame translate a FASTA file."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.config import DEFAULT_CHUNK_SIZE, Settings


@click.command("prepare")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (chunked.fa, nucleotide.fa, protein.faa, frames.parquet).",
)
@click.option(
    "--chunk-size",
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    type=click.IntRange(min=3),
    help="Chunk length in bp (300 or 500 for the published classifiers).",
)
@click.pass_context
def command(ctx: click.Context, input_path: Path, out_dir: Path, chunk_size: int) -> None:
    """Split INPUT (FASTA, plain or gzip) into overlapping chunks and keep the stop-free frames
    of their six-frame translation, exactly as the original VirNucPro does."""
    from pipeline.prepare.stage import prepare

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    paths = prepare(input_path, out_dir, chunk_size, progress=settings.progress)
    click.echo(f"prepared {paths.root}: {paths.stats.summary()}")
