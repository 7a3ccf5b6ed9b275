"""Report figures as ``data:image/png;base64,...`` URIs (matplotlib's Agg canvas, no pyplot state),
so the HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(width: float = 7.0, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _to_data_uri(fig) -> str:
    buf = io.BytesIO()
    # "tight" grows the canvas to fit long tick labels; cheaper than constrained layout.
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _short(label: str, width: int = 48) -> str:
    short = label if len(label) <= width else label[: width - 1] + "…"
    return short.replace("$", r"\$")  # a model or run name, not a mathtext formula


def _time_axis(ax, times) -> None:
    """Concise date ticks; a single point in time gets a one-day window instead of a years-wide axis."""
    from datetime import timedelta

    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    times = [t for t in times if t is not None]
    if times:
        lo, hi = min(times), max(times)
        pad = max((hi - lo) * 0.05, timedelta(hours=12))
        ax.set_xlim(lo - pad, hi + pad)
    locator = AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _legend_outside(ax, n: int) -> None:
    """The legend right of the plot, never over the data."""
    if n:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _panels(n: int, height: float = 2.1, width: float = 9.0):
    fig = _figure(width, height * n + 0.3)
    fig.subplots_adjust(hspace=0.55)
    return fig, [fig.add_subplot(n, 1, k + 1) for k in range(n)]


def throughput_panels(df, max_panels: int = 8) -> str:
    """``df``: columns panel (a model or metric), series (precision, backend and device), started_at,
    value; one panel per model or metric (at most ``max_panels``), one line per series, legends
    outside the plots."""
    panels = sorted(df["panel"].unique())[:max_panels]
    fig, axes = _panels(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        part = df[df["panel"] == panel].sort_values("started_at")
        groups = list(part.groupby("series", sort=True))
        for i, (series, rows) in enumerate(groups):
            ax.plot(
                rows["started_at"],
                rows["value"],
                marker="o",
                markersize=4,
                color=_COLORS[i % len(_COLORS)],
                label=_short(series, 40),
            )
        ax.set_title(_short(panel, 90), fontsize=9, loc="left")
        ax.set_ylabel(part["unit"].iloc[0] if "unit" in part and len(part) else "tokens / s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        _time_axis(ax, part["started_at"].tolist())
        _legend_outside(ax, len(groups))
    return _to_data_uri(fig)


def benchmark_trends(df, max_panels: int = 8) -> str:
    """``df``: columns group, name, started_at, median (seconds) of CPU pytest-benchmark runs; one
    panel per group, one trend line per benchmark across runs (log scale: benchmarks differ by orders
    of magnitude), legends outside."""
    groups = sorted(df["group"].unique())[:max_panels]
    fig, axes = _panels(len(groups), height=2.0)
    for ax, group in zip(axes, groups, strict=True):
        part = df[df["group"] == group].sort_values("started_at")
        lines = list(part.groupby("name", sort=True))
        for i, (name, rows) in enumerate(lines):
            ax.plot(
                rows["started_at"],
                rows["median"] * 1e3,
                marker="o",
                markersize=3,
                color=_COLORS[i % len(_COLORS)],
                label=_short(name, 40),
            )
        ax.set_title(f"group {group}", fontsize=9, loc="left")
        ax.set_ylabel("median ms", fontsize=8)
        values = part["median"][part["median"] > 0]
        if len(values) and values.max() / values.min() > 20:  # benchmarks of very different sizes
            from matplotlib.ticker import LogFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        _time_axis(ax, part["started_at"].tolist())
        _legend_outside(ax, len(lines))
    return _to_data_uri(fig)


def e2e_stage_bars(runs: list[dict]) -> str:
    """``runs``: dicts with label and stages ({stage: seconds}); one stacked horizontal bar of wall time
    by stage per end-to-end run, the legend outside."""
    fig = _figure(8.0, 0.8 + 0.45 * max(len(runs), 2))
    ax = fig.add_subplot()
    stages = list(dict.fromkeys(s for r in runs for s in r["stages"]))
    labels = [r["label"] for r in runs]
    left = [0.0] * len(runs)
    for i, stage in enumerate(stages):
        widths = [float(r["stages"].get(stage) or 0.0) for r in runs]
        ax.barh(labels, widths, left=left, color=_COLORS[i % len(_COLORS)], label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, r in enumerate(runs):
        if r.get("wall_s"):
            ax.text(
                max(left[y], float(r["wall_s"])), y, f" {float(r['wall_s']):.1f} s", va="center", fontsize=8
            )
    ax.set_xlabel("seconds (wall time by stage)")
    ax.set_xlim(0, max([*left, *(float(r.get("wall_s") or 0) for r in runs), 1.0]) * 1.2)
    ax.invert_yaxis()
    _legend_outside(ax, len(stages))
    return _to_data_uri(fig)


def scaling_curve(df) -> str:
    """``df``: columns model, n_gpus, tokens_per_s (one scaling run); dashed lines = ideal
    (1-GPU throughput times the number of GPUs, or the smallest measured count scaled)."""
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    for i, (model, part) in enumerate(df.sort_values("n_gpus").groupby("model", sort=True)):
        color = _COLORS[i % len(_COLORS)]
        n = part["n_gpus"].to_numpy()
        tps = part["tokens_per_s"].to_numpy()
        ax.plot(n, tps, marker="o", color=color, label=_short(f"{model} measured"))
        ax.plot(n, tps[0] / n[0] * n, linestyle="--", color=color, alpha=0.6, label=_short(f"{model} ideal"))
    ax.set_xlabel("GPUs")
    ax.set_ylabel("tokens / s")
    ax.set_xticks(sorted(set(df["n_gpus"].tolist())))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend_outside(ax, 2 * df["model"].nunique())
    return _to_data_uri(fig)


def cosine_histograms(groups: Iterable[tuple[str, list[float]]]) -> str:
    """Histogram of ``1 - cosine`` on a log scale, one panel per comparison (at most 8)."""
    groups = list(groups)[:8]
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = _figure(7.0, 2.2 * rows + 0.4)
    fig.subplots_adjust(hspace=0.9, wspace=0.25)
    floor = 1e-10  # 1 - cos below this is rounding noise; pile it into the first bin
    for k, (label, values) in enumerate(groups):
        ax = fig.add_subplot(rows, cols, k + 1)
        dist = [max(1.0 - v, floor) for v in values if v is not None and math.isfinite(v)]
        lo = math.floor(math.log10(min(dist))) if dist else -10
        hi = max(math.ceil(math.log10(max(dist))), lo + 1) if dist else 0
        edges = [10 ** (lo + j * (hi - lo) / 30) for j in range(31)]
        ax.hist(dist, bins=edges, color=_COLORS[k % len(_COLORS)])
        ax.set_xscale("log")
        ax.set_title(_short(label, 60), fontsize=8)
        ax.set_xlabel("1 - cosine", fontsize=7)
        ax.tick_params(labelsize=7)
    return _to_data_uri(fig)


def packing_efficiency_bars(df) -> str:
    """``df``: columns label, packing_efficiency (latest value per model/backend); horizontal bars."""
    fig = _figure(6.0, 0.5 + 0.4 * max(len(df), 2))
    ax = fig.add_subplot()
    labels = [_short(x, 60) for x in df["label"]]
    ax.barh(labels, df["packing_efficiency"], color=_COLORS[2])
    for y, v in enumerate(df["packing_efficiency"]):
        ax.text(min(v, 1.0) - 0.01, y, f"{v:.1%}", va="center", ha="right", color="white", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("real tokens / (batches x token budget)")
    ax.invert_yaxis()
    return _to_data_uri(fig)


def stage_breakdown(df) -> str:
    """``df``: columns label (stage and model), seconds (one run); horizontal bars with shares."""
    fig = _figure(6.5, 0.5 + 0.4 * max(len(df), 2))
    ax = fig.add_subplot()
    total = float(df["seconds"].sum()) or 1.0
    labels = [_short(x, 60) for x in df["label"]]
    ax.barh(labels, df["seconds"], color=_COLORS[0])
    for y, v in enumerate(df["seconds"]):
        ax.text(v, y, f" {v:.1f} s ({v / total:.0%})", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, float(df["seconds"].max()) * 1.35 or 1.0)
    ax.invert_yaxis()
    return _to_data_uri(fig)
