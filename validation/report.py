"""Render the metrics store as one self-contained HTML file.

Figures are embedded as base64 PNG data URIs and the CSS is inline, so the file opens offline and
can be mailed or attached to a CI run. Every section renders with partial data: a section without
rows says so instead of failing.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"


def _records(df) -> list[dict[str, Any]]:
    return [] if df is None or df.empty else df.astype(object).where(df.notna(), None).to_dict("records")


def _fmt_num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def _fmt_cos(value: Any) -> str:
    return "–" if value is None else f"{value:.7f}"


def _fmt_pct(value: Any) -> str:
    return "–" if value is None else f"{value:+.1%}" if value < 0 or value > 0 else "0.0%"


def _section_throughput(store) -> dict[str, Any]:
    # pipeline runs (per embedding stage) and the GPU scripts' tokens/s figures, one series each
    df = store.query("""
        SELECT r.started_at, coalesce(s.model, s.stage) || ' [' || coalesce(s.precision, '-') || '] @ '
                   || coalesce(r.device_name, s.device, '?') AS series, avg(s.tokens_per_s) AS tokens_per_s
        FROM stage_metrics s JOIN runs r USING (run_id)
        WHERE s.tokens_per_s IS NOT NULL AND r.started_at IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT r.started_at,
                   d.benchmark || coalesce(' ' || json_extract_string(r.config, '$.model'), '') || ' '
                   || d.metric || ' @ ' || coalesce(r.device_name, '?') AS series,
               avg(d.value) AS tokens_per_s
        FROM device_benchmarks d JOIN runs r USING (run_id)
        WHERE d.metric LIKE '%tokens_per_s%' AND d.value IS NOT NULL AND r.started_at IS NOT NULL GROUP BY ALL
        ORDER BY 1""")
    if df.empty:
        return {"img": None, "rows": []}
    from validation import plots

    latest = df.sort_values("started_at").groupby("series").tail(1)
    return {"img": plots.throughput_over_time(df), "rows": _records(latest)}


def _section_scaling(store) -> dict[str, Any]:
    df = store.query("""
        SELECT s.* FROM scaling_results s WHERE s.run_id = (
            SELECT r.run_id FROM runs r WHERE r.run_id IN (SELECT run_id FROM scaling_results)
            ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC LIMIT 1)
        ORDER BY model, n_gpus""")
    if df.empty:
        return {"img": None, "rows": [], "run_id": None}
    from validation import plots

    return {"img": plots.scaling_curve(df), "rows": _records(df), "run_id": df["run_id"].iloc[0]}


def _latest_run_with(store, table: str, kind: str | None = None) -> str | None:
    where = f"AND r.kind = '{kind}'" if kind else ""
    df = store.query(f"""
        SELECT r.run_id FROM runs r WHERE r.run_id IN (SELECT run_id FROM {table}) {where}
        ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC LIMIT 1""")
    return None if df.empty else str(df["run_id"].iloc[0])


def _section_equivalence(store) -> dict[str, Any]:
    run_id = _latest_run_with(store, "equivalence_results")
    if run_id is None:
        return {"run_id": None, "rows": [], "img": None, "passed": None, "thresholds": {}}
    rows = store.query(
        "SELECT * FROM equivalence_results WHERE run_id = ? ORDER BY model, comparison, precision, backend",
        [run_id],
    )
    config = store.query("SELECT config FROM runs WHERE run_id = ?", [run_id])["config"].iloc[0]
    thresholds = (json.loads(config) or {}).get("thresholds") or {} if config else {}
    cos = store.query(
        "SELECT comparison, model, precision, backend, list(cosine ORDER BY idx) AS c "
        "FROM cosine_values WHERE run_id = ? GROUP BY ALL ORDER BY ALL",
        [run_id],
    )
    img = None
    if not cos.empty:
        from validation import plots

        img = plots.cosine_histograms(
            (f"{r.model} {r.comparison} {r.precision}/{r.backend}", list(r.c)) for r in cos.itertuples()
        )
    return {
        "run_id": run_id,
        "rows": _records(rows),
        "img": img,
        "passed": bool(rows["passed"].all()),
        "thresholds": thresholds,
    }


def _section_packing(store) -> dict[str, Any]:
    run_id = store.query("""
        SELECT r.run_id FROM runs r JOIN stage_metrics s USING (run_id)
        WHERE s.packing_efficiency IS NOT NULL
        ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC LIMIT 1""")
    if run_id.empty:
        return {"img": None, "rows": [], "run_id": None}
    rid = str(run_id["run_id"].iloc[0])
    df = store.query(
        """
        SELECT stage || coalesce(' ' || model, '') || ' [' || coalesce(backend, '-') || ']' AS label,
               avg(packing_efficiency) AS packing_efficiency
        FROM stage_metrics WHERE run_id = ? AND packing_efficiency IS NOT NULL GROUP BY ALL ORDER BY 1""",
        [rid],
    )
    from validation import plots

    return {"img": plots.packing_efficiency(df), "rows": _records(df), "run_id": rid}


def _section_stages(store) -> dict[str, Any]:
    rid = _latest_run_with(store, "stage_metrics")
    if rid is None:
        return {"img": None, "rows": [], "run_id": None}
    df = store.query(
        """
        SELECT stage || coalesce(' ' || model, '') AS label, sum(seconds) AS seconds, min(idx) AS first
        FROM stage_metrics WHERE run_id = ? AND seconds IS NOT NULL GROUP BY ALL ORDER BY first""",
        [rid],
    )
    if df.empty:
        return {"img": None, "rows": [], "run_id": rid}
    from validation import plots

    total = float(df["seconds"].sum())
    df["share"] = df["seconds"] / total if total else None
    return {"img": plots.stage_breakdown(df), "rows": _records(df), "run_id": rid, "total": total}


def _section_benchmarks(store) -> dict[str, Any]:
    rid = _latest_run_with(store, "benchmark_results")
    rows = (
        []
        if rid is None
        else _records(
            store.query(
                'SELECT name, "group", min, median, mean, stddev, rounds FROM benchmark_results '
                "WHERE run_id = ? "
                'ORDER BY "group", name',
                [rid],
            )
        )
    )
    dev_rid = _latest_run_with(store, "device_benchmarks")
    dev = (
        []
        if dev_rid is None
        else _records(
            store.query(
                "SELECT benchmark, metric, value FROM device_benchmarks WHERE run_id = ? ORDER BY ALL",
                [dev_rid],
            )
        )
    )
    return {"run_id": rid, "rows": rows, "device_run_id": dev_rid, "device_rows": dev}


def _section_records(run_dir: str | Path | None) -> dict[str, Any]:
    """The per-record score plot of one predict output directory (``pipeline.classify.plots.plot_run``)."""
    if run_dir is None:
        return {"run_dir": None, "img": None}
    import base64

    from pipeline.classify.plots import plot_run

    png = plot_run(run_dir)
    return {"run_dir": str(run_dir), "img": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}


def collect(
    db_path: str | Path,
    baseline: str | None = None,
    slowdown_threshold: float = 0.10,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as plain Python data (figures as data URIs)."""
    from validation.metrics_store import SCHEMA_VERSION, MetricsStore
    from validation.regression import check_regressions

    store = MetricsStore(db_path)
    runs = store.query(
        "SELECT run_id, kind, source, started_at, git_commit, host, device_name, device_count "
        "FROM runs ORDER BY started_at DESC NULLS LAST, run_id DESC"
    )
    regressions = check_regressions(db_path, slowdown_threshold, baseline=baseline)
    equivalence = _section_equivalence(store)
    return {
        "db_path": str(db_path),
        "schema_version": SCHEMA_VERSION,
        "threshold": slowdown_threshold,
        "baseline": baseline,
        "runs": _records(runs.head(30)),
        "n_runs": len(runs),
        "latest": _records(runs.head(1))[0] if not runs.empty else None,
        "equivalence": equivalence,
        "throughput": _section_throughput(store),
        "scaling": _section_scaling(store),
        "packing": _section_packing(store),
        "stages": _section_stages(store),
        "records": _section_records(run_dir),
        "benchmarks": _section_benchmarks(store),
        "regressions": regressions,
        "n_regressed": sum(1 for r in regressions if r["regressed"]),
    }


def render_html(data: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_fmt_num, cos=_fmt_cos, pct=_fmt_pct)
    from pipeline.core.runinfo import utc_now

    return env.get_template(TEMPLATE_NAME).render(generated_at=utc_now(), **data)


def render_report(
    db_path: str | Path,
    out_html: str | Path,
    baseline: str | None = None,
    slowdown_threshold: float = 0.10,
    run_dir: str | Path | None = None,
) -> Path:
    """Write the HTML report for the metrics store at ``db_path`` to ``out_html`` (atomically).

    Args:
        db_path: DuckDB metrics store (created empty if missing: the report then says "no data yet").
        out_html: output file.
        baseline: a run id to compare the latest runs against, next to the previous run.
        slowdown_threshold: slowdowns above this fraction are flagged.
        run_dir: a finished predict output directory whose per-record score plot to include.
    Returns:
        ``out_html`` as a Path.
    Raises:
        ConfigError: bad threshold or unknown baseline run.
    """
    if str(out_html).endswith(("/", "\\")) or Path(out_html).is_dir():
        raise ConfigError(f"report output {out_html} is a directory; give a file name such as report.html")
    html = render_html(
        collect(db_path, baseline=baseline, slowdown_threshold=slowdown_threshold, run_dir=run_dir)
    )
    out = Path(out_html)
    atomic_write_text(out, html)
    log.info("wrote report %s (%d bytes)", out, len(html))
    return out
