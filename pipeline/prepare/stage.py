"""The ``prepare`` stage: FASTA -> overlapping chunks -> six-frame translation -> prepared directory.

Output directory (see docs/prepare.md):

- ``chunked.fa``: every chunk, id ``{record_id}_chunk_{k}`` (k from 1), input case, 60 bases a line;
- ``nucleotide.fa`` / ``protein.faa``: one record per kept frame, id ``{chunk_id}{F1..R3}``,
  uppercase nucleotides / amino acids on one line each, in input order, frames F1..F3, R1..R3;
- ``frames.parquet``: the length index, one row per kept frame in ``protein.faa`` order.

Chunking and translation reproduce the original VirNucPro ``split_fasta_chunk`` / ``identify_seq``
exactly, quirks included (see `chunk_bounds` and `pipeline.prepare.translate`).

All four files are written into a staging directory inside the output directory and published
together (`pipeline.core.atomic.publish_together`) only when the whole input was read and written
without error, followed by ``prepared.json``, the completion record: the size of each file. Readers
go through `PreparedPaths.locate`, which refuses a directory without that record (prepare did not
finish) or whose files differ from it (mixed or changed), so they never read a mix of two runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from pipeline.core.atomic import atomic_write_text, publish_together, remove_stale_staging, staging_dir
from pipeline.core.errors import ConfigError, InputError, OutputIntegrityError
from pipeline.prepare.fasta import read_fasta_bytes
from pipeline.prepare.translate import FRAME_LABELS, Frame, six_frames, translate_both_strands

if TYPE_CHECKING:
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

CHUNKED_FA = "chunked.fa"
NUCLEOTIDE_FA = "nucleotide.fa"
PROTEIN_FAA = "protein.faa"
FRAMES_PARQUET = "frames.parquet"
#: The completion record, published after the four files (see `write_manifest`).
MANIFEST = "prepared.json"
MANIFEST_FORMAT = "virnucpro.prepared/1"
#: Bases of chunk sequence translated per vectorised batch (bounds memory to ~40 bytes per base).
BATCH_BASES = 1 << 22
_WRAP = 60


def chunk_bounds(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each chunk of a sequence of ``length`` bases, as the original tool cuts it.

    ``n = ceil(L / C)`` chunks; the surplus ``R = n*C - L`` is meant to be spread as overlaps
    ``[lo+1] * need + [lo] * (n-1-need) + [0]`` with ``lo = R // n`` and ``need = R - lo*(n-1)``.
    Chunk ``k`` starts at ``k*C`` minus the sum of the first ``k`` overlaps and is cut at ``L``.
    Because ``need`` can exceed ``n - 1``, the overlaps may not add up to ``R`` and the last chunk
    can be shorter than ``C`` (L=600, C=500 gives [0, 500) and [299, 600)); this is the original's
    behaviour and is kept on purpose.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size} must be a positive number of bases")
    if length <= 0:
        return []
    if length <= chunk_size:
        return [(0, length)]
    n = -(-length // chunk_size)
    surplus = n * chunk_size - length
    lo = surplus // n
    need = surplus - lo * (n - 1)
    bounds = []
    for k in range(n):
        # sum of the first k overlaps; only indices <= n-2 are ever summed
        shift = min(k, need) * (lo + 1) + max(0, k - need) * lo
        start = k * chunk_size - shift
        bounds.append((start, min(start + chunk_size, length)))
    return bounds


def chunk_sequence(seq: str, chunk_size: int) -> list[str]:
    """The chunks of ``seq`` (see `chunk_bounds`), in order, case preserved."""
    return [seq[a:b] for a, b in chunk_bounds(len(seq), chunk_size)]


@dataclass(frozen=True)
class PrepareStats:
    """What one prepare run did: input records and bases, chunks written, frames kept, wall seconds."""

    records: int
    bases: int
    chunks: int
    frames: int
    seconds: float

    @property
    def mbp_per_s(self) -> float:
        return self.bases / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        return (
            f"{self.records} records, {self.bases} bp -> {self.chunks} chunks, "
            f"{self.frames} frames kept in {self.seconds:.2f} s ({self.mbp_per_s:.1f} Mbp/s)"
        )


@dataclass(frozen=True)
class PreparedPaths:
    """The files of a prepared directory.

    ``stats`` is set when the object comes from `prepare`, and None from `PreparedPaths.locate`.
    """

    root: Path
    chunked: Path
    nucleotide: Path
    protein: Path
    frames: Path
    stats: PrepareStats | None = field(default=None, compare=False)

    @classmethod
    def in_dir(cls, out_dir: str | os.PathLike[str]) -> PreparedPaths:
        """Where prepare writes inside ``out_dir`` (the files need not exist)."""
        root = Path(out_dir)
        return cls(root, root / CHUNKED_FA, root / NUCLEOTIDE_FA, root / PROTEIN_FAA, root / FRAMES_PARQUET)

    @classmethod
    def locate(cls, out_dir: str | os.PathLike[str]) -> PreparedPaths:
        """The files of a finished prepare in ``out_dir``, checked against its ``prepared.json``.

        Raises `InputError` naming the file when the record or a file is missing (prepare did not
        finish, or was killed while publishing), and `OutputIntegrityError` when the record is
        unreadable or a file differs in size from what prepare wrote (changed, truncated, or taken
        from another run).
        """
        paths = cls.in_dir(out_dir)
        rerun = f"rerun `virnucpro prepare INPUT -o {paths.root}`"
        record = paths.root / MANIFEST
        if not record.is_file():
            if any(p.exists() for p in paths.files()):
                raise InputError(
                    f"prepare did not finish in {paths.root}: {MANIFEST}, written last, is missing, so "
                    f"the files there may come from different runs; {rerun}"
                )
            missing = ", ".join(p.name for p in paths.files())
            raise InputError(
                f"{paths.root} is not a prepared directory: missing {missing}; "
                f"run `virnucpro prepare INPUT -o {paths.root}` first"
            )
        sizes = _read_manifest(record, rerun)
        for path in paths.files():
            if not path.is_file():
                raise InputError(f"{paths.root} is not a prepared directory: missing {path.name}; {rerun}")
            actual = path.stat().st_size
            if actual != sizes[path.name]:
                raise OutputIntegrityError(
                    f"{path} is {actual} bytes but prepare wrote {sizes[path.name]} ({MANIFEST}): it was "
                    f"changed, truncated or replaced after prepare finished; {rerun}"
                )
        return paths

    def files(self) -> tuple[Path, Path, Path, Path]:
        return (self.chunked, self.nucleotide, self.protein, self.frames)

    def read_frames(self, columns: list[str]):
        """Columns of ``frames.parquet`` as a ``pyarrow.Table``; `OutputIntegrityError` when it cannot
        be read."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self.frames, columns=columns)
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            raise OutputIntegrityError(
                f"{self.frames} cannot be read as the frame index ({str(exc).splitlines()[0][:200]}); "
                f"rerun `virnucpro prepare INPUT -o {self.root}`"
            ) from None


def _read_manifest(record: Path, rerun: str) -> dict[str, int]:
    """File name -> size in bytes from ``prepared.json``; `InputError` when it is not one."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        sizes = {
            name: int(files[name]["bytes"])
            for name in (CHUNKED_FA, NUCLEOTIDE_FA, PROTEIN_FAA, FRAMES_PARQUET)
        }
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        detail = exc if not isinstance(exc, KeyError) else f"no entry {exc}"
        raise OutputIntegrityError(f"{record} is not a readable prepare record ({detail}); {rerun}") from None
    return sizes


def write_manifest(
    out_dir: str | os.PathLike[str],
    *,
    chunk_size: int | None = None,
    stats: PrepareStats | None = None,
    target: str | os.PathLike[str] | None = None,
) -> Path:
    """Record the four files of ``out_dir`` as one finished prepare: ``prepared.json`` with the size
    of each (``target``: write the record there instead). `prepare` calls it on its staging
    directory; tools and tests that assemble a prepared directory by hand call it when done."""
    paths = PreparedPaths.in_dir(out_dir)
    record = {
        "format": MANIFEST_FORMAT,
        "chunk_size": chunk_size,
        "stats": None if stats is None else {k: getattr(stats, k) for k in PrepareStats.__dataclass_fields__},
        "files": {p.name: {"bytes": p.stat().st_size} for p in paths.files()},
    }
    out = Path(target) if target is not None else paths.root / MANIFEST
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    return out


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _frames_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("record_id", pa.string()),
            ("chunk_id", pa.string()),
            ("frame", pa.string()),
            ("nt_length", pa.int32()),
            ("aa_length", pa.int32()),
        ]
    )


def _wrap(seq: bytes) -> bytes:
    if len(seq) <= _WRAP:
        return seq
    return b"\n".join([seq[i : i + _WRAP] for i in range(0, len(seq), _WRAP)])


class _BatchWriter:
    """Collects chunks; translates and writes them a batch at a time."""

    def __init__(
        self, chunked: IO[bytes], nucleotide: IO[bytes], protein: IO[bytes], frames_writer: pq.ParquetWriter
    ) -> None:
        self._chunked = chunked
        self._nucleotide = nucleotide
        self._protein = protein
        self._frames = frames_writer
        self._record_ids: list[str] = []
        self._chunk_record: list[int] = []
        self._chunk_ids: list[str] = []
        self._pieces: list[bytes] = []
        self._bases = 0
        self.chunks = 0
        self.frames = 0

    def add(self, record_id: str, seq: bytes, chunk_size: int) -> None:
        record_index = len(self._record_ids)
        self._record_ids.append(record_id)
        if len(seq) <= chunk_size:
            self._chunk_record.append(record_index)
            self._chunk_ids.append(f"{record_id}_chunk_1")
            self._pieces.append(seq)
            self._bases += len(seq)
        else:
            for k, (a, b) in enumerate(chunk_bounds(len(seq), chunk_size), start=1):
                self._chunk_record.append(record_index)
                self._chunk_ids.append(f"{record_id}_chunk_{k}")
                self._pieces.append(seq[a:b])
                self._bases += b - a
                if self._bases >= BATCH_BASES:
                    self.flush()
                    record_index = 0
                    self._record_ids.append(record_id)
        if self._bases >= BATCH_BASES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if not self._pieces:
            self._record_ids.clear()
            return
        chunk_ids = self._chunk_ids
        chunk_id_bytes = [c.encode("utf-8") for c in chunk_ids]
        self._chunked.write(
            b"".join([b">%s\n%s\n" % (cid, _wrap(piece)) for cid, piece in zip(chunk_id_bytes, self._pieces)])
        )
        raw = b"".join(self._pieces)
        lengths = np.fromiter((len(p) for p in self._pieces), dtype=np.int64, count=len(self._pieces))
        ends = np.cumsum(lengths)
        starts = ends - lengths
        forward, reverse = translate_both_strands(raw.upper(), starts, ends)
        strands = (forward, reverse)
        kept = np.concatenate([forward.kept, reverse.kept], axis=1)
        chunk_index, frame_index = np.nonzero(kept)
        if len(chunk_index):

            def pick(name: str) -> np.ndarray:
                both = np.concatenate([getattr(forward, name), getattr(reverse, name)], axis=1)
                return both[chunk_index, frame_index]

            first, n_codons, n_aa, nt_end = (pick(n) for n in ("first", "n_codons", "n_aa", "nt_end"))
            nuc_lines: list[bytes] = []
            prot_lines: list[bytes] = []
            ids: list[str] = []
            label_bytes = [lab.encode() for lab in FRAME_LABELS]
            for c, f, p0, nc, na, p1 in zip(
                chunk_index.tolist(),
                frame_index.tolist(),
                first.tolist(),
                n_codons.tolist(),
                n_aa.tolist(),
                nt_end.tolist(),
            ):
                strand = strands[f >= 3]
                head = b">%s%s\n" % (chunk_id_bytes[c], label_bytes[f])
                nuc_lines.append(head + strand.buffer[p0:p1] + b"\n")
                prot_lines.append(head + strand.protein_at(p0, nc, na) + b"\n")
                ids.append(chunk_ids[c] + FRAME_LABELS[f])
            self._nucleotide.write(b"".join(nuc_lines))
            self._protein.write(b"".join(prot_lines))
            record_of_chunk = np.asarray(self._chunk_record, dtype=np.int64)[chunk_index]
            table = pa.table(
                {
                    "id": pa.array(ids, pa.string()),
                    "record_id": pa.array(
                        [self._record_ids[i] for i in record_of_chunk.tolist()], pa.string()
                    ),
                    "chunk_id": pa.array([chunk_ids[c] for c in chunk_index.tolist()], pa.string()),
                    "frame": pa.array([FRAME_LABELS[f] for f in frame_index.tolist()], pa.string()),
                    "nt_length": pa.array((nt_end - first).astype(np.int32), pa.int32()),
                    "aa_length": pa.array(n_aa.astype(np.int32), pa.int32()),
                },
                schema=self._frames.schema,
            )
            self._frames.write_table(table)
            self.frames += len(ids)
        self.chunks += len(self._pieces)
        self._record_ids.clear()
        self._chunk_record.clear()
        self._chunk_ids.clear()
        self._pieces.clear()
        self._bases = 0


def prepare(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    chunk_size: int = 500,
    *,
    progress: bool = False,
) -> PreparedPaths:
    """Chunk and six-frame translate a nucleotide FASTA file into ``out_dir``.

    Args:
        input_path: FASTA, plain or gzip (detected from its magic bytes).
        out_dir: created if needed; existing prepared files in it are replaced only on success,
            all four together (see the module docstring).
        chunk_size: chunk length in bases (300 or 500 for the published classifiers).
        progress: show a tqdm progress bar (bases) on stderr for inputs that take over a second.

    Returns:
        The written paths, with ``stats`` (records, bases, chunks, frames, seconds).

    Raises:
        InputError: bad FASTA (nothing is published; a directory created here is removed again).
        ConfigError: ``chunk_size`` < 3.
        OSError: the outputs could not be written or published (no space, a file size limit, an
            immutable or read-only file or directory). Nothing is published then either: the files
            of an earlier prepare in ``out_dir`` stay exactly as they were.
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if chunk_size < 3:
        raise ConfigError(
            f"chunk_size={chunk_size} must be at least 3 bases (one codon); 300 or 500 is usual"
        )
    source = Path(input_path)
    paths = PreparedPaths.in_dir(out_dir)
    created_dir = not paths.root.exists()
    remove_stale_staging(paths.root)  # what a killed prepare left
    t0 = time.perf_counter()
    records = bases = 0
    try:
        with staging_dir(paths.root) as stage:
            staged = PreparedPaths.in_dir(stage)
            with contextlib.ExitStack() as stack:
                handles = [
                    stack.enter_context(open(p, "wb", buffering=1 << 20))
                    for p in (staged.chunked, staged.nucleotide, staged.protein)
                ]
                frames_writer = stack.enter_context(pq.ParquetWriter(staged.frames, _frames_schema()))
                writer = _BatchWriter(*handles, frames_writer)
                bar = stack.enter_context(
                    tqdm(
                        total=None,
                        unit="bp",
                        unit_scale=True,
                        desc="prepare",
                        disable=not progress,
                        delay=1.0,
                        leave=False,
                    )
                )
                for record_id, seq in read_fasta_bytes(source):
                    records += 1
                    bases += len(seq)
                    writer.add(record_id, seq, chunk_size)
                    if progress and (records % 4096 == 0 or len(seq) >= BATCH_BASES):
                        bar.update(bases - bar.n)
                writer.flush()
                bar.update(bases - bar.n)
            for path in staged.files():
                _fsync(path)
            stats = PrepareStats(
                records=records,
                bases=bases,
                chunks=writer.chunks,
                frames=writer.frames,
                seconds=time.perf_counter() - t0,
            )
            write_manifest(stage, chunk_size=chunk_size, stats=stats)
            publish_together(
                [(s, t) for s, t in zip(staged.files(), paths.files())],
                marker=(stage / MANIFEST, paths.root / MANIFEST),
            )
    except OSError as exc:
        _remove_if_created(paths.root, created_dir)
        if exc.filename is None:  # a failed write() names no file: say where the outputs were going
            raise type(exc)(
                exc.errno, f"{exc.strerror} (writing the prepared files)", str(paths.root)
            ) from exc
        raise
    except BaseException:
        _remove_if_created(paths.root, created_dir)
        raise
    log.info("prepare %s -> %s: %s", source, paths.root, stats.summary())
    return PreparedPaths(paths.root, paths.chunked, paths.nucleotide, paths.protein, paths.frames, stats)


def _remove_if_created(root: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            root.rmdir()  # only if empty: never removes anything else


__all__ = [
    "CHUNKED_FA",
    "FRAMES_PARQUET",
    "MANIFEST",
    "NUCLEOTIDE_FA",
    "PROTEIN_FAA",
    "Frame",
    "PrepareStats",
    "PreparedPaths",
    "chunk_bounds",
    "chunk_sequence",
    "prepare",
    "six_frames",
    "write_manifest",
]
