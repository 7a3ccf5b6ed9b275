"""Per-record score plot, in the spirit of the original ``drew_fig.py``.

One panel per input record: for every chunk a horizontal bar at its highest P(virus) spanning the
chunk's approximate position on the record (``(index - 1) * chunk_size`` to ``index * chunk_size``),
red when the chunk is called viral, dark blue otherwise, with the 0.5 line for reference. Unlike the
original it maps chunks to records on the last ``_chunk_`` (record ids may contain ``_chunk_``), uses
the run's chunk size instead of a fixed 500, and plots P(virus) rather than the winning class's score
so that low and high values read the same way in every panel.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.classify.merge import chunk_ids, chunk_table, read_scores
from pipeline.core.atomic import atomic_write_bytes
from pipeline.core.errors import OutputIntegrityError
from pipeline.core.paths import read_json_state

if TYPE_CHECKING:
    import pandas as pd

VIRUS_COLOR = "red"
OTHERS_COLOR = "darkblue"


def plot_record_scores(
    table: pd.DataFrame,
    *,
    records: Sequence[str] | None = None,
    max_records: int = 5,
    chunk_size: int = 500,
    path: str | Path | None = None,
) -> bytes:
    """Render the plot as PNG bytes (and write them to ``path`` when given).

    Args:
        table: `pipeline.classify.merge.chunk_table` output (columns record_id, chunk_index, max_score_virus,
            is_virus); chunks without frames are skipped.
        records: which records to draw (default: the first ``max_records`` in table order).
        max_records: cap on panels when ``records`` is None.
        chunk_size: bp per chunk, for the x axis.
    """
    from matplotlib.figure import Figure

    scored = table[table["max_score_virus"].notna() & table["chunk_index"].notna()]
    if records is None:
        records = list(dict.fromkeys(scored["record_id"]))[:max_records]
    records = list(records)
    n = max(len(records), 1)
    # A Figure not registered with pyplot: no global state, safe in threads and workers.
    fig = Figure(figsize=(12, 1.9 * n + 0.4))
    axes = fig.subplots(nrows=n, ncols=1, squeeze=False)[:, 0]
    if not records:
        axes[0].text(0.5, 0.5, "no scored chunks", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, record in zip(axes, records):
        rows = scored[scored["record_id"] == record]
        for idx, score, viral in zip(rows["chunk_index"], rows["max_score_virus"], rows["is_virus"]):
            start = (int(idx) - 1) * chunk_size
            ax.plot(
                [start, start + chunk_size],
                [float(score), float(score)],
                linewidth=2.5,
                color=VIRUS_COLOR if viral else OTHERS_COLOR,
                solid_capstyle="butt",
            )
        ax.axhline(0.5, color="lightgray", linewidth=0.8, linestyle="--", zorder=0)
        # parse_math off: a record id such as a$\\foo$b is a name, not a TeX formula
        ax.set_title(str(record), fontsize=11, fontweight="bold", loc="left", parse_math=False)
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel("max P(virus)", fontsize=9, color="dimgray")
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.ticklabel_format(style="plain", axis="x", useOffset=False)
        ax.tick_params(colors="dimgray", labelsize=8)
    axes[-1].set_xlabel("position on record (bp, by chunk)", fontsize=9, color="dimgray")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def plot_run(
    run_dir: str | Path,
    *,
    records: Sequence[str] | None = None,
    max_records: int = 5,
    chunk_size: int | None = None,
    path: str | Path | None = None,
) -> bytes:
    """`plot_record_scores` for a finished predict output directory (``frame_scores.parquet`` +
    ``chunked.fa``); the chunk size defaults to the one in ``run_record.json`` (else 500)."""
    root = Path(run_dir)
    if chunk_size is None:
        chunk_size = 500
        record = root / "run_record.json"
        if record.is_file():
            data = read_json_state(record, "run record", "rerun the predict stage into a new directory")
            config = (data.get("config") or {}) if isinstance(data, dict) else None
            value = config.get("chunk_size", 500) if isinstance(config, dict) else None
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OutputIntegrityError(
                    f"{record}: the run record has no valid config.chunk_size; rerun predict into a new "
                    "directory, or give the chunk size explicitly"
                )
            chunk_size = value
    ids, s1, s2 = read_scores(root / "frame_scores.parquet")
    table = chunk_table(ids, s1, s2, chunk_ids(root))
    return plot_record_scores(
        table, records=records, max_records=max_records, chunk_size=chunk_size, path=path
    )


__all__ = ["plot_record_scores", "plot_run"]
