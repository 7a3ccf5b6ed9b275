"""``virnucpro report -o FILE.html``: render the metrics store as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.config import Settings
from pipeline.core.errors import ConfigError


@click.command("report")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Metrics database (default: VIRNUCPRO_METRICS_DB or reports/metrics.duckdb).",
)
@click.option(
    "-o",
    "--out",
    "out_html",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write (plots embedded; opens offline).",
)
@click.option(
    "--baseline", default=None, metavar="RUN_ID", help="Also compare the latest runs with this pinned run."
)
@click.option(
    "--slowdown-threshold",
    default=None,
    type=click.FloatRange(0, 10),
    help="Minimum slowdown to flag, as a fraction (0.10 = 10 %), for CPU and GPU runs alike. Default: "
    "the one shared with the nightly DAG, the larger of 3 standard deviations of the earlier runs' "
    "spread and 20 % on CPU / 5 % on GPU.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="A finished predict output directory: adds its per-record score plot.",
)
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="Exit non-zero (after writing the report) when a slowdown is beyond noise.",
)
@click.pass_context
def command(
    ctx: click.Context,
    db_path: Path | None,
    out_html: Path,
    baseline: str | None,
    slowdown_threshold: float | None,
    run_dir: Path | None,
    fail_on_regression: bool,
) -> None:
    """Write the HTML report: latest run summary, equivalence pass/fail, throughput over time,
    scaling, cosine histograms, packing efficiency, stage times and regressions."""
    from validation.regression import check_regressions
    from validation.report import render_report

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    db = db_path or settings.metrics_db
    if not Path(db).is_file():
        raise ConfigError(
            f"metrics database {db} does not exist; ingest results into it first "
            f"(virnucpro ingest FILE... --db {db}) or give the right --db"
        )
    out = render_report(
        db, out_html, baseline=baseline, slowdown_threshold=slowdown_threshold, run_dir=run_dir
    )
    click.echo(f"wrote {out}")
    if fail_on_regression:
        check_regressions(db, slowdown_threshold, baseline=baseline, enforce=True)
