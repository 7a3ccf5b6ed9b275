"""``virnucpro ingest FILE... [--db PATH]``: load result JSON files into the DuckDB metrics store."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.config import Settings


@click.command("ingest")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Metrics database (default: VIRNUCPRO_METRICS_DB or reports/metrics.duckdb).",
)
@click.pass_context
def command(ctx: click.Context, files: tuple[Path, ...], db_path: Path | None) -> None:
    """Ingest FILES (run records, validate JSON, pytest-benchmark JSON, scaling JSON, GPU benchmark
    JSON; the type is detected from the content). A file ingested before is skipped."""
    from validation.metrics_store import MetricsStore

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    store = MetricsStore(db_path or settings.metrics_db)
    for result in store.ingest_files(files):
        state = "skipped (already ingested)" if result.skipped else f"{result.rows} rows"
        click.echo(f"{result.path}: {result.file_type}, run {result.run_id}: {state}")
    counts = store.row_counts()
    click.echo(f"{store.path}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
