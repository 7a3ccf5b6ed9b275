"""Performance regression checks over the metrics store, with the noise of earlier runs in mind.

Every comparable number in the store becomes a *metric* of a run (throughput from run records and
scaling runs, medians from pytest-benchmark, rate/time metrics of device benchmarks). Runs are
grouped by (source, kind, device name). The latest run of each group is compared with the median of
up to `NoisePolicy.window` runs before it and, when asked, with a pinned baseline run.

A *slowdown* is positive when the current run is worse: ``1 - new/old`` for higher-is-better
numbers (throughput), ``new/old - 1`` for times; a negative slowdown is a speed-up. A metric
*regressed* only when its slowdown passes its *limit*: the larger of ``k`` times its relative noise
and a minimum slowdown, which is tighter on GPUs (dedicated, steady) than on CPUs (shared, noisy).
The relative noise is the larger of the spread of the earlier runs' values (standard deviation over
median) and the spread inside the runs themselves (pytest-benchmark's stddev over median of its
rounds). A metric whose noise is unknown (one earlier value and no spread of its own) is reported
but never flagged: one earlier run cannot tell a regression from noise. One `DEFAULT_POLICY` serves
``virnucpro report`` and the nightly DAG alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, ThresholdFailed
from validation.metrics_store import MetricsStore

__all__ = [
    "DEFAULT_POLICY",
    "NoisePolicy",
    "check_regressions",
    "describe_change",
    "metric_table",
    "regressed_names",
]


@dataclass(frozen=True)
class NoisePolicy:
    """When a slowdown counts as a regression (see the module docstring).

    Attributes:
        k: how many relative standard deviations of noise a slowdown must pass.
        min_slowdown_cpu: the smallest slowdown flagged on CPU runs (fraction; 0.20 = 20 %).
        min_slowdown_gpu: the same on GPU runs (tighter: a dedicated GPU is steadier).
        window: how many earlier runs of a group form the reference (their median) and its spread.
    """

    k: float = 3.0
    min_slowdown_cpu: float = 0.20
    min_slowdown_gpu: float = 0.05
    window: int = 5

    def __post_init__(self) -> None:
        for name in ("min_slowdown_cpu", "min_slowdown_gpu"):
            value = getattr(self, name)
            if not 0 <= value < 10:
                raise ConfigError(f"slowdown threshold {value!r} must be a fraction such as 0.20 (20 %)")
        if self.k < 0 or self.window < 1:
            raise ConfigError(
                f"noise policy k={self.k!r}, window={self.window!r}: k must be >= 0, window >= 1"
            )

    def with_threshold(self, threshold: float | None) -> NoisePolicy:
        """This policy with one minimum slowdown for CPU and GPU runs (None: unchanged)."""
        if threshold is None:
            return self
        return NoisePolicy(self.k, float(threshold), float(threshold), self.window)

    def limit(self, gpu: bool, noise: float | None) -> float:
        """The slowdown above which a metric regressed."""
        floor = self.min_slowdown_gpu if gpu else self.min_slowdown_cpu
        return max(floor, self.k * noise) if noise is not None else floor

    def describe(self) -> str:
        return (
            f"the larger of {self.k:g} standard deviations of the earlier runs' spread and a minimum "
            f"slowdown of {self.min_slowdown_cpu:.0%} on CPU / {self.min_slowdown_gpu:.0%} on GPU"
        )


DEFAULT_POLICY = NoisePolicy()

# One row per (run, metric): a name, a unit, a value, which direction is better and the spread of the
# value inside its own run (relative; pytest-benchmark rounds), when known.
_METRICS_SQL = r"""
WITH m AS (
    SELECT run_id,
           'stage ' || stage || coalesce(' ' || model, '') || ' [' || coalesce(precision, '-') || ', '
               || coalesce(backend, '-') || ']' AS metric,
           'tokens/s' AS unit, avg(tokens_per_s) AS value, TRUE AS higher_is_better,
           CAST(NULL AS DOUBLE) AS rel_spread
    FROM stage_metrics WHERE tokens_per_s IS NOT NULL GROUP BY ALL
    UNION ALL
    SELECT run_id, fullname, 's (median)', median, FALSE,
           CASE WHEN median > 0 THEN stddev / median END
    FROM benchmark_results WHERE median IS NOT NULL
    UNION ALL
    SELECT run_id, model || ' on ' || n_gpus || ' GPU(s)', 'tokens/s', tokens_per_s, TRUE, NULL
    FROM scaling_results WHERE tokens_per_s IS NOT NULL
    UNION ALL
    SELECT run_id, benchmark || ': ' || metric, '', value,
           NOT (lower(metric) LIKE '%seconds%' OR lower(metric) LIKE '%latency%'
                OR lower(metric) LIKE '%\_ms' ESCAPE '\' OR lower(metric) LIKE '%time%'
                OR lower(metric) LIKE '%wall\_s%' ESCAPE '\'),
           NULL
    FROM device_benchmarks
    WHERE value IS NOT NULL AND (
        lower(metric) LIKE '%per\_s%' ESCAPE '\' OR lower(metric) LIKE '%throughput%'
        OR lower(metric) LIKE '%tflop%' OR lower(metric) LIKE '%seconds%'
        OR lower(metric) LIKE '%latency%' OR lower(metric) LIKE '%\_ms' ESCAPE '\'
        OR lower(metric) LIKE '%wall\_s%' ESCAPE '\')
)
SELECT m.run_id, m.metric, m.unit, m.value, m.higher_is_better, m.rel_spread, r.kind, r.source,
       coalesce(r.device_name, '') AS device_name, coalesce(r.device_count, 0) > 0 AS gpu, r.started_at
FROM m JOIN runs r USING (run_id)
"""


def metric_table(db_path: str | Path):
    """All comparable metrics as a pandas DataFrame: run_id, metric, unit, value, higher_is_better,
    rel_spread, kind, source, device_name, gpu, started_at."""
    return MetricsStore(db_path).query(_METRICS_SQL)


def _slowdown(reference: float | None, current: float | None, higher_is_better: bool) -> float | None:
    if not reference or current is None:
        return None
    return 1.0 - current / reference if higher_is_better else current / reference - 1.0


def _noise(history: list[float], spreads: list[float]) -> float | None:
    """Relative noise: the larger of the earlier values' stdev/median and the runs' own spreads."""
    parts: list[float] = []
    if len(history) >= 2:
        centre = statistics.median(history)
        if centre:
            parts.append(statistics.stdev(history) / abs(centre))
    spreads = [s for s in spreads if s is not None and s == s]
    if spreads:
        parts.append(statistics.median(spreads))
    return max(parts) if parts else None


def _by_metric(metrics, run_id: str) -> dict[str, Any]:
    part = metrics[metrics.run_id == run_id]
    return {row.metric: row for row in part.itertuples(index=False)}


def _compare(
    metrics, ref_runs: list[str], cur_run: str, label: str, policy: NoisePolicy, noise_runs: list[str]
) -> list[dict[str, Any]]:
    """Rows for every metric the current run shares with the reference runs; the reference value
    is the median over ``ref_runs``, the noise comes from ``noise_runs`` and the runs' own spread."""
    cur = _by_metric(metrics, cur_run)
    refs = [_by_metric(metrics, r) for r in ref_runs]
    noisy = [_by_metric(metrics, r) for r in noise_runs]
    rows = []
    for name in sorted(cur):
        values = [float(ref[name].value) for ref in refs if name in ref]
        if not values:
            continue
        c = cur[name]
        reference_value = statistics.median(values)
        history = [float(n[name].value) for n in noisy if name in n]
        spreads = [
            float(x[name].rel_spread) for x in [*noisy, cur] if name in x and x[name].rel_spread is not None
        ]
        noise = _noise(history, spreads)
        gpu = bool(c.gpu)
        limit = policy.limit(gpu, noise)
        slowdown = _slowdown(reference_value, float(c.value), bool(c.higher_is_better))
        rows.append(
            {
                "reference": label,
                "source": c.source,
                "kind": c.kind,
                "device_name": c.device_name,
                "device_class": "gpu" if gpu else "cpu",
                "metric": name,
                "unit": c.unit,
                "higher_is_better": bool(c.higher_is_better),
                "reference_run": [r for r, ref in zip(ref_runs, refs, strict=True) if name in ref][-1],
                "reference_runs": len(values),
                "current_run": cur_run,
                "reference_value": reference_value,
                "current_value": float(c.value),
                "slowdown": slowdown,
                "noise": noise,
                "limit": limit,
                "noise_known": noise is not None,
                "regressed": noise is not None and slowdown is not None and slowdown > limit,
            }
        )
    return rows


def check_regressions(
    db_path: str | Path,
    threshold: float | None = None,
    baseline: str | None = None,
    enforce: bool = False,
    policy: NoisePolicy = DEFAULT_POLICY,
) -> list[dict[str, Any]]:
    """Compare the latest run of every (source, kind, device) group with the median of the runs
    before it and, with ``baseline``, the latest run of the baseline's (source, kind) with that
    pinned run.

    Args:
        db_path: the metrics DuckDB file.
        threshold: a minimum slowdown (fraction, 0.10 = 10 %) for CPU and GPU runs alike, instead
            of the policy's; the noise limit (``k`` standard deviations) still applies on top.
        baseline: a run id to compare against as well.
        enforce: raise `ThresholdFailed` when any metric regressed.
        policy: the noise policy (`DEFAULT_POLICY`).
    Returns:
        One dict per compared metric: reference ("previous" | "baseline"), source, kind,
        device_name, device_class ("cpu" | "gpu"), metric, unit, higher_is_better, reference_run
        (the latest reference run), reference_runs (how many), current_run, reference_value
        (their median), current_value, slowdown (fraction, positive = worse, negative = faster),
        noise (relative standard deviation or None), limit (the slowdown that counts), regressed.
    Raises:
        ConfigError: bad threshold, or the baseline run is not in the store.
        ThresholdFailed: ``enforce`` and at least one regression.
    """
    if threshold is not None and not 0 <= threshold < 10:
        raise ConfigError(f"slowdown threshold {threshold!r} must be a fraction such as 0.10 (10 %)")
    policy = policy.with_threshold(threshold)
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
                earlier = ids[-1 - policy.window : -1]
                rows += _compare(metrics, earlier, ids[-1], "previous", policy, earlier)
        if baseline is not None:
            base = order[order.run_id == baseline]
            if base.empty:
                raise ConfigError(
                    f"baseline run {baseline!r} has no comparable metrics in {db_path}; "
                    "pick a run id from the report's run list"
                )
            b = base.iloc[0]
            same = order[(order["source"] == b["source"]) & (order["kind"] == b["kind"])].run_id.tolist()
            latest = same[-1]
            if latest != baseline:
                rows += _compare(
                    metrics, [baseline], latest, "baseline", policy, same[-1 - policy.window : -1]
                )
    elif baseline is not None:
        raise ConfigError(f"baseline run {baseline!r} given but {db_path} has no comparable metrics yet")
    if enforce:
        bad = [r for r in rows if r["regressed"]]
        if bad:
            worst = max(bad, key=lambda r: r["slowdown"])
            raise ThresholdFailed(
                f"{len(bad)} metric(s) slowed down beyond noise ({policy.describe()}); worst: "
                f"{worst['metric']} {worst['slowdown']:.1%} slower in {worst['current_run']} than "
                f"{worst['reference_run']} (limit {worst['limit']:.1%}); investigate, or re-pin the "
                "baseline if the change is intended"
            )
    return rows


def describe_change(slowdown: float | None, higher_is_better: bool = True) -> str:
    """A slowdown in words: ``12.0 % slower``, ``2.07x faster`` (speed-ups as speed-ups), ``same``."""
    if slowdown is None:
        return "–"
    if abs(slowdown) < 0.0005:
        return "same"
    if slowdown > 0:
        return f"{slowdown:.1%} slower"
    # speed-up factor: new/old for throughput (1 - s), old/new for times (1 / (1 + s))
    factor = (1.0 - slowdown) if higher_is_better else 1.0 / (1.0 + slowdown)
    return f"{factor:.2f}x faster" if factor >= 1.1 else f"{factor - 1.0:.1%} faster"


def regressed_names(rows: list[dict[str, Any]]) -> list[str]:
    """The metrics that regressed beyond noise, each once, in row order."""
    return list(dict.fromkeys(r["metric"] for r in rows if r.get("regressed")))
