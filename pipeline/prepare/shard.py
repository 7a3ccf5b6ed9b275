"""Length-sorted stride sharding of a prepared directory.

Rows (frames) are sorted by protein length, longest first (stable), and row ``i`` of that order
goes to shard ``i % n``. Every shard therefore gets the same length mix and nearly the same
token count, so GPUs given one shard each finish together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_path, publish_together, remove_stale_staging, staging_dir
from pipeline.core.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-{:03d}.parquet"


def length_sorted_order(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Row indices sorted by length, longest first; ties keep input order (stable).

    Returns ``(N,) int64``.
    """
    arr = np.asarray(lengths, dtype=np.int64)
    return np.argsort(-arr, kind="stable").astype(np.int64, copy=False)


def _read_fasta_dict(path: Path) -> tuple[list[str], list[str]]:
    """(ids, sequences) of a FASTA file the prepare stage wrote (ids = title up to whitespace)."""
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    if not path.is_file():
        raise InputError(f"{path} is missing; run `virnucpro prepare` to create the prepared directory")
    ids, seqs = [], []
    with open(path, encoding="utf-8") as fh:
        for title, seq in SimpleFastaParser(fh):
            ids.append(title.split(None, 1)[0] if title.strip() else "")
            seqs.append(seq)
    return ids, seqs


def write_shards(prepared_dir: Path | str, n_shards: int, out_dir: Path | str) -> list[Path]:
    """Split a prepared directory into ``n_shards`` parquet files (columns id, nucleotide, protein).

    Args:
        prepared_dir: holds ``frames.parquet``, ``nucleotide.fa`` and ``protein.faa``.
        n_shards: number of shards (one per GPU slot), >= 1. Shards may be empty when there
            are fewer frames than shards.
        out_dir: where ``shard-000.parquet`` ... are written (atomically).
    Returns:
        The shard paths, in shard order.
    """
    import pyarrow as pa

    from pipeline.prepare.stage import PreparedPaths

    if n_shards < 1:
        raise ConfigError(f"n_shards={n_shards} must be >= 1")
    prepared, out = Path(prepared_dir), Path(out_dir)
    frames = PreparedPaths.locate(prepared).read_frames(["id", "aa_length"])
    frame_ids = [str(x) for x in frames.column("id").to_pylist()]
    aa_length = np.asarray(frames.column("aa_length").to_numpy(zero_copy_only=False), dtype=np.int64)

    prot_ids, proteins = _read_fasta_dict(prepared / "protein.faa")
    if prot_ids != frame_ids:
        first = next(
            (i for i, (a, b) in enumerate(zip(prot_ids, frame_ids)) if a != b),
            min(len(prot_ids), len(frame_ids)),
        )
        raise InputError(
            f"{prepared / 'protein.faa'} ({len(prot_ids)} records) does not match frames.parquet "
            f"({len(frame_ids)} rows) at row {first}; rerun `virnucpro prepare`"
        )
    nuc_ids, nucleotides = _read_fasta_dict(prepared / "nucleotide.fa")
    nuc_by_id = dict(zip(nuc_ids, nucleotides))
    missing = [i for i in frame_ids if i not in nuc_by_id]
    if missing:
        raise InputError(
            f"{len(missing)} frame(s) have no record in {prepared / 'nucleotide.fa'}, e.g. "
            f"{missing[0]!r}; rerun `virnucpro prepare`"
        )

    schema = pa.schema([("id", pa.string()), ("nucleotide", pa.string()), ("protein", pa.string())])
    table = pa.table(
        {"id": frame_ids, "nucleotide": [nuc_by_id[i] for i in frame_ids], "protein": proteins}, schema=schema
    )
    return write_table_shards(table, n_shards, out, lengths=aa_length)


def write_table_shards(
    table, n_shards: int, out_dir: Path | str, lengths: np.ndarray | None = None
) -> list[Path]:
    """Stride-shard an in-memory ``pyarrow.Table`` of frames into ``n_shards`` parquet files.

    Rows are ordered by ``lengths`` (default: the length of the ``protein`` column), longest first
    and stable; row ``i`` of that order goes to shard ``i % n_shards``. Files are
    ``out_dir/shard-000.parquet`` ..., published together (all or none); shard files of an earlier
    split into more shards are removed. Returns them in shard order.
    """
    import pyarrow.parquet as pq

    if n_shards < 1:
        raise ConfigError(f"n_shards={n_shards} must be >= 1")
    if lengths is None:
        lengths = np.array([len(p) for p in table.column("protein").to_pylist()], dtype=np.int64)
    order = length_sorted_order(lengths)
    out = Path(out_dir)
    remove_stale_staging(out)
    paths = [out / SHARD_PATTERN.format(k) for k in range(n_shards)]
    # the shards are one split of one input: published together, never a new shard-000 beside an
    # old shard-001 (a failed write or rename leaves the earlier set as it was)
    with staging_dir(out) as stage:
        for k, path in enumerate(paths):
            with atomic_path(stage / path.name) as tmp:
                pq.write_table(table.take(order[k::n_shards]), tmp)
        publish_together([(stage / path.name, path) for path in paths])
    # shards beyond n_shards from an earlier split into more shards are not part of this one
    for extra in sorted(out.glob("shard-[0-9][0-9][0-9].parquet")):
        if extra not in paths:
            extra.unlink(missing_ok=True)
            log.info("removed %s, left by an earlier split into more shards", extra)
    return paths


__all__ = ["SHARD_PATTERN", "write_shards", "write_table_shards"]
