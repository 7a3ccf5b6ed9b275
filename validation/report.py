"""Render the metrics store as one self-contained HTML file.

Figures are embedded as base64 PNG data URIs and the CSS is inline, so the file opens offline and
can be mailed or attached to a CI run. Every section renders with partial data: a section without
rows says so instead of failing.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.classify.plots import plot_run
from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import ConfigError
from pipeline.core.runinfo import utc_now
from validation import plots
from validation.metrics_store import SCHEMA_VERSION, MetricsStore
from validation.regression import DEFAULT_POLICY, check_regressions, describe_change, regressed_names

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


def _fmt_frac(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def _fmt_pct(value: Any) -> str:
    return "–" if value is None else f"{value:+.1%}" if value < 0 or value > 0 else "0.0%"


def _section_throughput(store) -> dict[str, Any]:
    # One panel per model (pipeline runs' embedding stages) or per GPU script and model; one line per
    # precision/backend/device (pipeline) or metric/device (scripts). End-to-end runs have their own
    # section.
    df = store.query("""
        SELECT r.started_at, coalesce(s.model, s.stage) AS panel,
               coalesce(s.precision, '-') || ', ' || coalesce(s.backend, '-') || ' @ '
                   || coalesce(r.device_name, s.device, '?') AS series,
               'tokens/s' AS unit, avg(s.tokens_per_s) AS value
        FROM stage_metrics s JOIN runs r USING (run_id)
        WHERE s.tokens_per_s IS NOT NULL AND r.started_at IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT r.started_at,
               d.benchmark || coalesce(' ' || json_extract_string(r.config, '$.model'), '') AS panel,
               d.metric || ' @ ' || coalesce(r.device_name, '?') AS series, 'tokens/s' AS unit,
               avg(d.value) AS value
        FROM device_benchmarks d JOIN runs r USING (run_id)
        WHERE d.metric LIKE '%tokens_per_s%' AND d.metric NOT LIKE 'runs[%' AND d.value IS NOT NULL
              AND r.started_at IS NOT NULL GROUP BY ALL
        ORDER BY 1""")
    if df.empty:
        return {"img": None, "rows": [], "panels": 0}

    latest = (
        df.sort_values("started_at").groupby(["panel", "series"]).tail(1).sort_values(["panel", "series"])
    )
    return {"img": plots.throughput_panels(df), "rows": _records(latest), "panels": df["panel"].nunique()}


def _section_scaling(store) -> dict[str, Any]:
    df = store.query("""
        SELECT s.* FROM scaling_results s WHERE s.run_id = (
            SELECT r.run_id FROM runs r WHERE r.run_id IN (SELECT run_id FROM scaling_results)
            ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC LIMIT 1)
        ORDER BY model, n_gpus""")
    if df.empty:
        return {"img": None, "rows": [], "run_id": None}

    return {"img": plots.scaling_curve(df), "rows": _records(df), "run_id": df["run_id"].iloc[0]}


def _latest_run_with(store, table: str, kind: str | None = None) -> str | None:
    where = f"AND r.kind = '{kind}'" if kind else ""
    df = store.query(f"""
        SELECT r.run_id FROM runs r WHERE r.run_id IN (SELECT run_id FROM {table}) {where}
        ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC LIMIT 1""")
    return None if df.empty else str(df["run_id"].iloc[0])


def _set_thresholds(thresholds: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The thresholds a validate run checked, nested ones (the fp8 rows') flattened to ``fp8.min_cosine``;
    unset ones (None) are left out, as they were not checked."""
    out: dict[str, Any] = {}
    for key, value in thresholds.items():
        if isinstance(value, Mapping):
            out.update(_set_thresholds(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def _section_equivalence(store) -> dict[str, Any]:
    run_id = _latest_run_with(store, "equivalence_results")
    if run_id is None:
        return {"run_id": None, "rows": [], "img": None, "passed": None, "thresholds": {}}
    # flip counts, the farthest flip's margin and whether labels were enforced live in ``extra`` (JSON):
    # NULL for documents written before validate recorded them
    rows = store.query(
        """SELECT *,
               TRY_CAST(json_extract(extra, '$.label_flips') AS BIGINT) AS label_flips,
               TRY_CAST(json_extract(extra, '$.chunk_label_flips') AS BIGINT) AS chunk_label_flips,
               TRY_CAST(json_extract(extra, '$.flip_max_margin') AS DOUBLE) AS flip_max_margin,
               TRY_CAST(json_extract(extra, '$.label_enforced') AS BOOLEAN) AS label_enforced
           FROM equivalence_results WHERE run_id = ? ORDER BY model, comparison, precision, backend""",
        [run_id],
    )
    config = store.query("SELECT config FROM runs WHERE run_id = ?", [run_id])["config"].iloc[0]
    thresholds = (json.loads(config) or {}).get("thresholds") or {} if config else {}
    thresholds = _set_thresholds(thresholds)
    cos = store.query(
        "SELECT comparison, model, precision, backend, list(cosine ORDER BY idx) AS c "
        "FROM cosine_values WHERE run_id = ? GROUP BY ALL ORDER BY ALL",
        [run_id],
    )
    img = None
    if not cos.empty:
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

    return {"img": plots.packing_efficiency_bars(df), "rows": _records(df), "run_id": rid}


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

    total = float(df["seconds"].sum())
    df["share"] = df["seconds"] / total if total else None
    return {"img": plots.stage_breakdown(df), "rows": _records(df), "run_id": rid, "total": total}


def _module(fullname: str | None) -> str:
    """``benchmarks/bench_esm2.py::test_packed[x]`` -> ``bench_esm2``."""
    path = str(fullname or "").split("::", 1)[0]
    return Path(path).stem if path.endswith(".py") else path


def _section_benchmarks(store) -> dict[str, Any]:
    rid = _latest_run_with(store, "benchmark_results")
    rows = (
        []
        if rid is None
        else _records(
            store.query(
                'SELECT "group", fullname, name, min, median, mean, stddev, rounds FROM benchmark_results '
                'WHERE run_id = ? ORDER BY "group" NULLS LAST, fullname',
                [rid],
            )
        )
    )
    for row in rows:
        row["module"] = _module(row["fullname"])
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
    # CPU runs only: GPU hosts differ too much between runs to draw one line through them.
    trend = store.query("""
        SELECT r.started_at, coalesce(b."group", '(none)') AS "group", b.fullname, b.median
        FROM benchmark_results b JOIN runs r USING (run_id)
        WHERE b.median IS NOT NULL AND r.started_at IS NOT NULL AND coalesce(r.device_count, 0) = 0
        ORDER BY 1""")
    img = None
    n_trend_runs = 0
    if not trend.empty:
        trend["name"] = [f"{_module(f)}::{f.split('::', 1)[-1]}" for f in trend["fullname"]]
        img = plots.benchmark_trends(trend)
        n_trend_runs = int(trend["started_at"].nunique())
    return {
        "run_id": rid,
        "rows": rows,
        "device_run_id": dev_rid,
        "device_rows": dev,
        "trend_img": img,
        "trend_runs": n_trend_runs,
    }


_E2E_METRIC = re.compile(r"^runs\[(?P<label>[^\]]+)\]\.(?P<field>.+)$")


def _e2e_runs(rows) -> list[dict[str, Any]]:
    """End-to-end runs from the flattened metrics of one ``benchmarks/gpu/e2e_device.py`` run
    (``runs[<name>].<field>`` rows; the store keeps numbers only, so the cache state is read from the
    run's name, ``n2/warm``): label, gpus, cache, wall_s, stages, tokens_per_s (per model), gpu_busy
    (mean busy fraction), finish_spread_s."""
    runs: dict[str, dict[str, Any]] = {}
    for metric, value in rows:
        m = _E2E_METRIC.match(metric)
        if not m:
            continue
        run = runs.setdefault(m["label"], {"key": m["label"], "stages": {}, "tokens_per_s": {}})
        field = m["field"]
        model = re.fullmatch(r"models\.(.+)\.tokens_per_s", field)
        if field.startswith("stages."):
            run["stages"][field.split(".", 1)[1]] = value
        elif model:
            run["tokens_per_s"][model[1]] = value
        elif field == "gpu_busy_fraction.mean":
            run["gpu_busy"] = value
        else:
            run[field] = value
    out = []
    for run in runs.values():
        key = run["key"].lower()
        run["cache"] = "cold" if "cold" in key else "warm" if "warm" in key else None
        gpus = run.get("gpus") or run.get("n_gpus")
        run["gpus"] = int(gpus) if gpus is not None else None
        run["label"] = f"{run['gpus'] or '?'} GPU{'s' if (run['gpus'] or 0) != 1 else ''}" + (
            f", {run['cache']} cache" if run["cache"] else ""
        )
        out.append(run)
    out.sort(key=lambda r: (r["cache"] or "", r["gpus"] or 0))
    for run in out:  # scaling ratio: the 1-GPU wall time of the same cache state over this one's
        one = next(
            (o for o in out if o["cache"] == run["cache"] and o["gpus"] == 1 and o.get("wall_s")), None
        )
        run["speedup"] = one["wall_s"] / run["wall_s"] if one and run.get("wall_s") else None
        run["efficiency"] = run["speedup"] / run["gpus"] if run["speedup"] and run["gpus"] else None
    return out


def _section_e2e(store) -> dict[str, Any]:
    rid = store.query(r"""
        SELECT r.run_id FROM runs r JOIN device_benchmarks d USING (run_id)
        WHERE d.metric LIKE 'runs[%].wall\_s' ESCAPE '\'
        ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC LIMIT 1""")
    if rid.empty:
        return {"run_id": None, "runs": [], "img": None}
    run_id = str(rid["run_id"].iloc[0])
    rows = store.query(
        "SELECT metric, value FROM device_benchmarks WHERE run_id = ? ORDER BY metric", [run_id]
    )
    runs = _e2e_runs(zip(rows["metric"], rows["value"], strict=True))
    img = None
    if any(r["stages"] for r in runs):
        img = plots.e2e_stage_bars(runs)
    return {
        "run_id": run_id,
        "runs": runs,
        "img": img,
        "models": sorted({m for r in runs for m in r["tokens_per_s"]}),
    }


def _section_records(run_dir: str | Path | None) -> dict[str, Any]:
    """The per-record score plot of one predict output directory (``pipeline.classify.plots.plot_run``)."""
    if run_dir is None:
        return {"run_dir": None, "img": None}

    png = plot_run(run_dir)
    return {"run_dir": str(run_dir), "img": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}


def _latest_pipeline_run(store):
    """The latest production run (run records), not the latest benchmark or validation run."""
    df = store.query(
        "SELECT run_id, kind, source, started_at, git_commit, host, device_name, device_count "
        "FROM runs WHERE source = 'run' ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 1"
    )
    return _records(df)[0] if not df.empty else None


def collect(
    db_path: str | Path,
    baseline: str | None = None,
    slowdown_threshold: float | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as plain Python data (figures as data URIs)."""
    store = MetricsStore(db_path)
    runs = store.query(
        "SELECT run_id, kind, source, started_at, git_commit, host, device_name, device_count "
        "FROM runs ORDER BY started_at DESC NULLS LAST, run_id DESC"
    )
    regressions = check_regressions(db_path, slowdown_threshold, baseline=baseline)
    for row in regressions:
        row["change"] = describe_change(row["slowdown"], row["higher_is_better"])
    equivalence = _section_equivalence(store)
    return {
        "db_path": str(db_path),
        "schema_version": SCHEMA_VERSION,
        "policy": DEFAULT_POLICY.with_threshold(slowdown_threshold).describe(),
        "baseline": baseline,
        "runs": _records(runs.head(30)),
        "n_runs": len(runs),
        "latest": _latest_pipeline_run(store),
        "latest_any": _records(runs.head(1))[0] if not runs.empty else None,
        "equivalence": equivalence,
        "throughput": _section_throughput(store),
        "scaling": _section_scaling(store),
        "e2e": _section_e2e(store),
        "packing": _section_packing(store),
        "stages": _section_stages(store),
        "records": _section_records(run_dir),
        "benchmarks": _section_benchmarks(store),
        "regressions": regressions,
        "n_regressed": sum(1 for r in regressions if r["regressed"]),
        "regressed_names": regressed_names(regressions),
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
    env.filters.update(num=_fmt_num, cos=_fmt_cos, pct=_fmt_pct, frac=_fmt_frac)

    return env.get_template(TEMPLATE_NAME).render(generated_at=utc_now(), **data)


def render_report(
    db_path: str | Path,
    out_html: str | Path,
    baseline: str | None = None,
    slowdown_threshold: float | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Write the HTML report for the metrics store at ``db_path`` to ``out_html`` (atomically).

    Args:
        db_path: DuckDB metrics store (created empty if missing: the report then says "no data yet").
        out_html: output file.
        baseline: a run id to compare the latest runs against, next to the previous run.
        slowdown_threshold: a minimum slowdown (fraction) for CPU and GPU runs instead of the shared
            default (`validation.regression.DEFAULT_POLICY`); slowdowns within noise are never flagged.
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


def verdict_line(run_dir: str | Path) -> str:
    """One line for a terminal about a nightly run directory: equivalence pass/fail and the
    regressions beyond noise by name (from ``validation/equivalence.json`` and
    ``validation/regressions.json``)."""
    validation = Path(run_dir) / "validation"
    parts = []
    eq_path = validation / "equivalence.json"
    if eq_path.is_file():
        doc = json.loads(eq_path.read_text())
        results = doc.get("results", []) if isinstance(doc, dict) else doc
        failed = [r for r in results if r.get("passed") is False]
        if failed or (isinstance(doc, dict) and doc.get("passed") is False):
            names = ", ".join(
                f"{r.get('model')} {r.get('comparison')} {r.get('precision')}" for r in failed[:3]
            )
            parts.append(f"equivalence FAIL ({len(failed)} of {len(results)}: {names})")
        else:
            parts.append(f"equivalence PASS ({len(results)} comparisons)")
    else:
        parts.append("equivalence not run")
    reg_path = validation / "regressions.json"
    if reg_path.is_file():
        rows = json.loads(reg_path.read_text())
        names = regressed_names(rows)
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{len(names)} regression{'s' if len(names) != 1 else ''} beyond noise: {shown}")
        elif rows:
            parts.append(f"no regression beyond noise ({len(rows)} metrics compared)")
        else:
            parts.append("no earlier run to compare with")
    else:
        parts.append("regressions not checked")
    return "; ".join(parts)
