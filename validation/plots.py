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


def throughput_over_time(df) -> str:
    """``df``: columns started_at, series (model @ device), tokens_per_s; one line per series."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (series, part) in enumerate(df.sort_values("started_at").groupby("series", sort=True)):
        ax.plot(
            part["started_at"],
            part["tokens_per_s"],
            marker="o",
            color=_COLORS[i % len(_COLORS)],
            label=_short(series),
        )
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
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
    ax.legend(fontsize=7)
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


def packing_efficiency(df) -> str:
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
