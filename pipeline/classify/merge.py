"""Turn per-frame scores into the original tool's output files plus a per-record summary.

Files (all tab-separated; `merge` publishes the three together or none of them):

- ``prediction_results.txt`` - one row per kept frame, in ``protein.faa`` order, header
  ``Sequence_ID  Prediction  score1  score2``. ``score1`` = P(others), ``score2`` = P(virus), printed the
  way the original prints float32 numpy scalars (``str(np.float32(x))``: shortest round-trip digits,
  e.g. ``0.99981296``, ``1e-04``). ``Prediction`` is the argmax label; on an exact tie the first
  class wins (``others``), as ``torch.max`` does.
- ``prediction_results_highestscore.csv`` - per chunk: ``Modified_ID`` (the frame id without its last
  two characters, i.e. the chunk id) and ``Is_Virus`` = ``max(score2) >= max(score1)`` over the chunk's
  frames, printed ``True``/``False``, rows sorted by ``Modified_ID`` (pandas ``groupby`` default).
  Despite the name the original writes it tab-separated; so do we.
- ``record_summary.tsv`` (new) - per input record, in input order: ``record_id``, ``chunks``,
  ``chunks_with_frames``, ``viral_chunks``, ``max_virus_score``, ``call``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.atomic import atomic_open, publish_together, remove_stale_staging, staging_dir
from pipeline.core.errors import InputError, OutputIntegrityError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "prediction_results.txt"
HIGHESTSCORE_FILE = "prediction_results_highestscore.csv"
SUMMARY_FILE = "record_summary.tsv"
PREDICTIONS_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHESTSCORE_HEADER = "Modified_ID\tIs_Virus\n"
SUMMARY_COLUMNS = ("record_id", "chunks", "chunks_with_frames", "viral_chunks", "max_virus_score", "call")
CHUNK_SEP = "_chunk_"
_ROWS_PER_WRITE = 65536


def format_score(value: float) -> str:
    """A probability exactly as the original prints it: ``str`` of a numpy float32."""
    return str(np.float32(value))


def labels(score_others: np.ndarray, score_virus: np.ndarray) -> np.ndarray:
    """``virus`` where P(virus) > P(others), else ``others`` (ties go to class 0)."""
    return np.where(np.asarray(score_virus) > np.asarray(score_others), "virus", "others")


def chunk_of(frame_id: str) -> str:
    """Frame id -> chunk id: the original drops the last two characters (the ``F1``..``R3`` suffix)."""
    return frame_id[:-2]


def record_of(chunk_id: str) -> str:
    """Chunk id ``<record>_chunk_<n>`` -> record id; splits on the LAST ``_chunk_`` so record ids
    that contain ``_chunk_`` themselves stay whole."""
    return chunk_id.rsplit(CHUNK_SEP, 1)[0] if CHUNK_SEP in chunk_id else chunk_id


def chunk_number(chunk_id: str) -> int | None:
    tail = chunk_id.rsplit(CHUNK_SEP, 1)[1] if CHUNK_SEP in chunk_id else ""
    return int(tail) if tail.isdigit() else None


def write_predictions(
    ids: Sequence[str], score_others: np.ndarray, score_virus: np.ndarray, path: str | Path
) -> Path:
    """Write ``prediction_results.txt`` (rows in the given order)."""
    s1 = np.asarray(score_others, dtype=np.float32)
    s2 = np.asarray(score_virus, dtype=np.float32)
    lab = labels(s1, s2)
    out = Path(path)
    with atomic_open(out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(PREDICTIONS_HEADER)
        for start in range(0, len(ids), _ROWS_PER_WRITE):
            stop = min(start + _ROWS_PER_WRITE, len(ids))
            # astype(str) gives numpy's shortest float32 digits, identical to str(np.float32(x));
            # an f-string would print the float64 expansion instead (0.10000000149011612).
            t1 = s1[start:stop].astype(str)
            t2 = s2[start:stop].astype(str)
            fh.write(
                "".join(
                    f"{ids[start + j]}\t{lab[start + j]}\t{t1[j]}\t{t2[j]}\n" for j in range(stop - start)
                )
            )
    return out


def consensus(ids: Sequence[str], score_others: np.ndarray, score_virus: np.ndarray) -> pd.DataFrame:
    """Per-chunk call as the original computes it.

    Returns a DataFrame with columns ``Modified_ID`` (str), ``Is_Virus`` (bool), ``max_score1``,
    ``max_score2`` (float32), sorted by ``Modified_ID``.
    """
    import pandas as pd

    frame = pd.DataFrame(
        {
            "Modified_ID": pd.Series([chunk_of(i) for i in ids], dtype=object),
            "score1": np.asarray(score_others, dtype=np.float32),
            "score2": np.asarray(score_virus, dtype=np.float32),
        }
    )
    grouped = frame.groupby("Modified_ID", sort=True).agg(
        max_score1=("score1", "max"), max_score2=("score2", "max")
    )
    grouped["Is_Virus"] = grouped["max_score2"] >= grouped["max_score1"]
    return grouped.reset_index()[["Modified_ID", "Is_Virus", "max_score1", "max_score2"]]


def write_highestscore(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``prediction_results_highestscore.csv`` from `consensus` output (pandas' own writer,
    so quoting of odd ids matches the original byte for byte)."""
    out = Path(path)
    with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
        if len(table) == 0:
            fh.write(HIGHESTSCORE_HEADER)
        else:
            table[["Modified_ID", "Is_Virus"]].astype({"Is_Virus": bool}).to_csv(
                fh, sep="\t", index=False, lineterminator="\n"
            )
    return out


def chunk_ids(prepared_dir: str | Path) -> list[str] | None:
    """Chunk ids in input order from ``chunked.fa`` headers, or None when the directory holds no
    prepare output at all. A prepare that did not finish, or files that differ from what it wrote,
    raise `InputError` (`PreparedPaths.locate`)."""
    from pipeline.prepare.stage import MANIFEST, PreparedPaths

    root = Path(prepared_dir)
    if not (root / MANIFEST).exists() and not any(p.exists() for p in PreparedPaths.in_dir(root).files()):
        return None
    path = PreparedPaths.locate(root).chunked
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(">"):
                head = line[1:].split(maxsplit=1)
                out.append(head[0] if head else "")
    return out


def chunk_table(
    ids: Sequence[str], score_others: np.ndarray, score_virus: np.ndarray, chunks: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per chunk, in input order (chunks without a kept frame included when ``chunks`` is given).

    Columns: ``record_id``, ``chunk_id``, ``chunk_index`` (1-based, from the id), ``frames``,
    ``max_score_others``, ``max_score_virus`` (NaN without frames), ``is_virus`` (bool).
    """
    import pandas as pd

    cons = consensus(ids, score_others, score_virus)
    frames_per_chunk = pd.Series([chunk_of(i) for i in ids], dtype=object).value_counts()
    if chunks is None:
        chunks = list(dict.fromkeys(chunk_of(i) for i in ids))
    table = pd.DataFrame({"chunk_id": pd.Series(list(chunks), dtype=object)})
    table["record_id"] = [record_of(c) for c in table["chunk_id"]]
    table["chunk_index"] = pd.array([chunk_number(c) for c in table["chunk_id"]], dtype="Int64")
    table["frames"] = table["chunk_id"].map(frames_per_chunk).fillna(0).astype(int)
    by_id = cons.set_index("Modified_ID")
    table["max_score_others"] = table["chunk_id"].map(by_id["max_score1"]).astype("float32")
    table["max_score_virus"] = table["chunk_id"].map(by_id["max_score2"]).astype("float32")
    viral_ids = set(by_id.index[by_id["Is_Virus"].astype(bool)])
    table["is_virus"] = table["chunk_id"].isin(viral_ids).astype(bool)
    unknown = set(cons["Modified_ID"]) - set(table["chunk_id"])
    if unknown:
        raise InputError(
            f"{len(unknown)} scored chunk(s) are not in chunked.fa, e.g. {sorted(unknown)[:5]}; the scores "
            "belong to another prepared directory"
        )
    return table[
        ["record_id", "chunk_id", "chunk_index", "frames", "max_score_others", "max_score_virus", "is_virus"]
    ]


def record_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per input record (first-seen order) from `chunk_table` output.

    ``call`` is ``virus`` when at least one chunk is called viral, ``others`` when chunks were scored
    and none is viral, ``no_frames`` when no frame of the record survived translation.
    """
    import pandas as pd

    if len(table) == 0:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in SUMMARY_COLUMNS})
    work = table.assign(scored=table["frames"] > 0)
    agg = work.groupby("record_id", sort=False).agg(
        chunks=("chunk_id", "size"),
        chunks_with_frames=("scored", "sum"),
        viral_chunks=("is_virus", "sum"),
        best=("max_score_virus", "max"),
    )
    best = agg["best"].to_numpy(dtype=np.float32)
    has_best = ~np.isnan(best)
    text = np.where(has_best, best.astype(str), "")
    call = np.select(
        [agg["chunks_with_frames"].to_numpy() == 0, agg["viral_chunks"].to_numpy() > 0],
        ["no_frames", "virus"],
        default="others",
    )
    return pd.DataFrame(
        {
            "record_id": agg.index.to_numpy(dtype=object),
            "chunks": agg["chunks"].to_numpy(dtype=np.int64),
            "chunks_with_frames": agg["chunks_with_frames"].to_numpy(dtype=np.int64),
            "viral_chunks": agg["viral_chunks"].to_numpy(dtype=np.int64),
            "max_virus_score": text,
            "call": call,
        },
        columns=list(SUMMARY_COLUMNS),
    )


def write_summary(summary: pd.DataFrame, path: str | Path) -> Path:
    out = Path(path)
    with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
        summary.to_csv(fh, sep="\t", index=False, lineterminator="\n")
    return out


def read_scores(scores_path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``frame_scores.parquet`` -> (ids, score_others float32, score_virus float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(scores_path)
    if not path.is_file():
        raise InputError(f"scores file {path} does not exist; run the classify stage first")
    try:
        table = pq.read_table(path, columns=["id", "score_others", "score_virus"])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise OutputIntegrityError(
            f"{path} is truncated or not a frame-scores Parquet file ({type(exc).__name__}); rerun the "
            "classify stage (virnucpro predict ... --resume) to rewrite it"
        ) from None
    ids = [str(x) for x in table.column("id").to_pylist()]
    s1 = table.column("score_others").to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    s2 = table.column("score_virus").to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, s1, s2


def merge(scores_path: str | Path, prepared_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the two original-format files and ``record_summary.tsv`` into ``out_dir``: all three
    or, after any error (bad scores, no space, an immutable file), none - earlier ones stay as they were.

    Returns ``{"predictions": ..., "highestscore": ..., "summary": ...}``. With no scored frame the
    files hold their headers only (and every record is ``no_frames`` in the summary).
    """
    out = Path(out_dir)
    ids, s1, s2 = read_scores(scores_path)
    if not ids:
        log.warning(
            "no frame survived six-frame translation (every frame has a stop codon or the input "
            "is shorter than a codon); writing header-only outputs to %s",
            out,
        )
    cons = consensus(ids, s1, s2)
    summary = record_summary(chunk_table(ids, s1, s2, chunk_ids(prepared_dir)))
    # all three files appear together or not at all: written into a staging directory, then
    # published with every rename undone if one fails (an earlier run's files stay as they were)
    remove_stale_staging(out)
    with staging_dir(out) as stage:
        write_predictions(ids, s1, s2, stage / PREDICTIONS_FILE)
        write_highestscore(cons, stage / HIGHESTSCORE_FILE)
        write_summary(summary, stage / SUMMARY_FILE)
        names = (PREDICTIONS_FILE, HIGHESTSCORE_FILE, SUMMARY_FILE)
        publish_together([(stage / name, out / name) for name in names])
    log.info(
        "merged %d frames into %d chunk calls (%d viral)",
        len(ids),
        len(cons),
        int(cons["Is_Virus"].sum()) if len(cons) else 0,
    )
    return {
        "predictions": out / PREDICTIONS_FILE,
        "highestscore": out / HIGHESTSCORE_FILE,
        "summary": out / SUMMARY_FILE,
    }


__all__ = [
    "HIGHESTSCORE_FILE",
    "PREDICTIONS_FILE",
    "SUMMARY_FILE",
    "chunk_table",
    "consensus",
    "format_score",
    "merge",
    "read_scores",
    "record_summary",
    "write_highestscore",
    "write_predictions",
]
