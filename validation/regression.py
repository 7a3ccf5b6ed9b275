"""Performance regression checks over the metrics store.

Every comparable number in the store becomes a *metric* of a run (throughput from run records and
scaling runs, medians from pytest-benchmark, rate/time metrics of device benchmarks). Runs are
grouped by (source, kind, device name); the latest run of each group is compared with the run before
it and, when asked, with a pinned baseline run. A *slowdown* is positive when the current run is
worse: ``1 - new/old`` for higher-is-better numbers (throughput), ``new/old - 1`` for times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, ThresholdFailed

# One row per (run, metric): a name, a unit, a value and which direction is better.
_METRICS_SQL = r"""
WITH m AS (
    SELECT run_id,
           'stage ' || stage || coalesce(' ' || model, '') || ' [' || coalesce(precision, '-') || ', '
               || coalesce(backend, '-') || ']' AS metric,
           'tokens/s' AS unit, avg(tokens_per_s) AS value, TRUE AS higher_is_better
    FROM stage_metrics WHERE tokens_per_s IS NOT NULL GROUP BY ALL
    UNION ALL
    SELECT run_id, fullname, 's (median)', median, FALSE FROM benchmark_results WHERE median IS NOT NULL
    UNION ALL
    SELECT run_id, model || ' on ' || n_gpus || ' GPU(s)', 'tokens/s', tokens_per_s, TRUE
    FROM scaling_results WHERE tokens_per_s IS NOT NULL
    UNION ALL
    SELECT run_id, benchmark || ': ' || metric, '', value,
           NOT (lower(metric) LIKE '%seconds%' OR lower(metric) LIKE '%latency%'
                OR lower(metric) LIKE '%\_ms' ESCAPE '\' OR lower(metric) LIKE '%time%')
    FROM device_benchmarks
    WHERE value IS NOT NULL AND (
        lower(metric) LIKE '%per\_s%' ESCAPE '\' OR lower(metric) LIKE '%throughput%'
        OR lower(metric) LIKE '%tflop%' OR lower(metric) LIKE '%seconds%'
        OR lower(metric) LIKE '%latency%' OR lower(metric) LIKE '%\_ms' ESCAPE '\')
)
SELECT m.run_id, m.metric, m.unit, m.value, m.higher_is_better, r.kind, r.source,
       coalesce(r.device_name, '') AS device_name, r.started_at
FROM m JOIN runs r USING (run_id)
"""


def metric_table(db_path: str | Path):
    """All comparable metrics as a pandas DataFrame: run_id, metric, unit, value, higher_is_better,
    kind, source, device_name, started_at."""
    from validation.metrics_store import MetricsStore

    return MetricsStore(db_path).query(_METRICS_SQL)


def _slowdown(reference: float, current: float, higher_is_better: bool) -> float | None:
    if reference == 0 or reference is None or current is None:
        return None
    return 1.0 - current / reference if higher_is_better else current / reference - 1.0


def _compare(metrics, ref_run: str, cur_run: str, label: str, threshold: float) -> list[dict[str, Any]]:
    ref = metrics[metrics.run_id == ref_run].set_index("metric")
    cur = metrics[metrics.run_id == cur_run].set_index("metric")
    rows = []
    for name in sorted(set(ref.index) & set(cur.index)):
        r, c = ref.loc[name], cur.loc[name]
        slowdown = _slowdown(float(r["value"]), float(c["value"]), bool(c["higher_is_better"]))
        rows.append(
            {
                "reference": label,
                "source": c["source"],
                "kind": c["kind"],
                "device_name": c["device_name"],
                "metric": name,
                "unit": c["unit"],
                "higher_is_better": bool(c["higher_is_better"]),
                "reference_run": ref_run,
                "current_run": cur_run,
                "reference_value": float(r["value"]),
                "current_value": float(c["value"]),
                "slowdown": slowdown,
                "regressed": slowdown is not None and slowdown > threshold,
            }
        )
    return rows


def check_regressions(
    db_path: str | Path, threshold: float = 0.10, baseline: str | None = None, enforce: bool = False
) -> list[dict[str, Any]]:
    """Compare the latest run of every (source, kind, device) group with the run before it and,
    with ``baseline``, the latest run of the baseline's (source, kind) with that pinned run.

    Args:
        db_path: the metrics DuckDB file.
        threshold: a slowdown above this fraction (0.10 = 10 %) counts as a regression.
        baseline: a run id to compare against as well.
        enforce: raise `ThresholdFailed` when any metric regressed.
    Returns:
        One dict per compared metric: reference ("previous" | "baseline"), source, kind,
        device_name, metric, unit, higher_is_better, reference_run, current_run, reference_value,
        current_value, slowdown (fraction, positive = worse), regressed (bool).
    Raises:
        ConfigError: bad threshold, or the baseline run is not in the store.
        ThresholdFailed: ``enforce`` and at least one regression.
    """
    if not 0 <= threshold < 10:
        raise ConfigError(f"slowdown threshold {threshold!r} must be a fraction such as 0.10 (10 %)")
    metrics = metric_table(db_path)
    rows: list[dict[str, Any]] = []
    if not metrics.empty:
        order = (
            metrics[["run_id", "source", "kind", "device_name", "started_at"]]
            .drop_duplicates("run_id")
            .sort_values(["started_at", "run_id"], na_position="first")
        )
        for _, group in order.groupby(["source", "kind", "device_name"], sort=True):
            ids = group.run_id.tolist()
            if len(ids) >= 2:
                rows += _compare(metrics, ids[-2], ids[-1], "previous", threshold)
        if baseline is not None:
            base = order[order.run_id == baseline]
            if base.empty:
                raise ConfigError(
                    f"baseline run {baseline!r} has no comparable metrics in {db_path}; "
                    "pick a run id from the report's run list"
                )
            b = base.iloc[0]
            same = order[(order["source"] == b["source"]) & (order["kind"] == b["kind"])]
            latest = same.run_id.tolist()[-1]
            if latest != baseline:
                rows += _compare(metrics, baseline, latest, "baseline", threshold)
    elif baseline is not None:
        raise ConfigError(f"baseline run {baseline!r} given but {db_path} has no comparable metrics yet")
    if enforce:
        bad = [r for r in rows if r["regressed"]]
        if bad:
            worst = max(bad, key=lambda r: r["slowdown"])
            raise ThresholdFailed(
                f"{len(bad)} metric(s) slowed down more than {threshold:.0%}; worst: {worst['metric']} "
                f"{worst['slowdown']:.1%} slower in {worst['current_run']} than {worst['reference_run']}; "
                "investigate, or re-pin the baseline if the change is intended"
            )
    return rows
