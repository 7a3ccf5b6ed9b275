"""Embedding output directories: part files, completion markers, and a memory-mapped reader.

One shard's output directory::

    metadata.json            what made these vectors (model, kind, precision, input fingerprint, ...)
    part-00000.npy           (n, D) float32, rows in the shard's length-sorted order
    part-00000.ids.txt       n ids, one per line, row-aligned with the .npy
    part-00000.done          completion marker: row count, sizes and SHA-256 of both files
    ...
    run_record.json          timings of the run(s) that wrote it

A part exists for readers only once its ``.done`` marker exists; the marker is written last and
every file is written atomically (temp file + rename), so a crash leaves either a complete,
verifiable part or files without a valid marker, which resume redoes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_open, atomic_write_text
from pipeline.core.errors import InputError, OutputIntegrityError

FORMAT = "virnucpro.embeddings/1"
METADATA_FILE = "metadata.json"
RUN_RECORD_FILE = "run_record.json"
#: Part writes allowed to queue behind a shard's writer thread before the embedding loop waits.
MAX_PENDING_WRITES = 2
#: The multi-GPU coordinator's folder of worker logs, beside the shard directories of an embedding root.
WORKER_LOG_DIR = "logs"
VECTOR_DTYPE = np.float32
_PART_RE = re.compile(r"^part-(\d{5,})\.(npy|ids\.txt|done)$")
#: Fields of metadata.json that must agree between parts of one set and across shards.
MODEL_FIELDS = ("kind", "model", "repr_layer", "hidden_size", "precision", "dtype")


@dataclass(frozen=True)
class PartFiles:
    """The three files of part ``index`` in ``directory``."""

    directory: Path
    index: int

    @property
    def stem(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def vectors(self) -> Path:
        return self.directory / f"{self.stem}.npy"

    @property
    def ids(self) -> Path:
        return self.directory / f"{self.stem}.ids.txt"

    @property
    def marker(self) -> Path:
        return self.directory / f"{self.stem}.done"

    def remove(self) -> None:
        for path in (self.marker, self.vectors, self.ids):  # marker first: never a marker alone
            path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    atomic_write_text(Path(directory) / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True))


def read_metadata(directory: Path) -> dict[str, Any] | None:
    """metadata.json as a dict, or None when absent. A malformed file raises OutputIntegrityError."""
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputIntegrityError(f"{path} is unreadable ({exc}); delete the directory and rerun") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputIntegrityError(f"{path} is not a {FORMAT} metadata file; delete it and rerun")
    return data


def write_part(
    directory: Path, index: int, ids: Sequence[str], vectors: np.ndarray, fingerprint: str
) -> dict[str, Any]:
    """Write part ``index`` atomically: vectors, ids, then the marker. Returns the marker dict.

    Args:
        ids: ``n`` row ids (no newlines).
        vectors: ``(n, D)`` float32.
        fingerprint: input fingerprint of the shard, stored in the marker.
    """
    vectors = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise OutputIntegrityError(
            f"part {index}: {len(ids)} ids but vectors of shape {vectors.shape}; expected ({len(ids)}, D)"
        )
    if any("\n" in i or "\r" in i for i in ids):
        raise InputError(f"part {index}: an id contains a line break; ids must be single-line strings")
    files = PartFiles(Path(directory), index)
    files.marker.unlink(missing_ok=True)  # an old marker must never vouch for new files
    with atomic_open(files.vectors, "wb") as fh:
        np.save(fh, vectors, allow_pickle=False)
    with atomic_open(files.ids, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(f"{i}\n" for i in ids))
    marker = {
        "format": FORMAT,
        "part": index,
        "rows": len(ids),
        "dim": int(vectors.shape[1]),
        "dtype": np.dtype(VECTOR_DTYPE).name,
        "fingerprint": fingerprint,
        "vectors": {
            "file": files.vectors.name,
            "bytes": files.vectors.stat().st_size,
            "sha256": _sha256(files.vectors),
        },
        "ids": {"file": files.ids.name, "bytes": files.ids.stat().st_size, "sha256": _sha256(files.ids)},
    }
    atomic_write_text(files.marker, json.dumps(marker, indent=1, sort_keys=True))
    return marker


def _read_ids(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def check_part(
    directory: Path,
    index: int,
    *,
    expected_ids: Sequence[str] | None = None,
    dim: int | None = None,
    fingerprint: str | None = None,
    verify_checksums: bool = True,
) -> str | None:
    """Why part ``index`` is not a complete, intact part, or None when it is.

    Checks the marker, file sizes, SHA-256 of both files (unless ``verify_checksums`` is off),
    the ``.npy`` header (shape, dtype), the id count, and optionally the exact ids, the width
    and the input fingerprint.
    """
    files = PartFiles(Path(directory), index)
    if not files.marker.exists():
        return "no completion marker"
    try:
        marker = json.loads(files.marker.read_text(encoding="utf-8"))
        rows, mdim = int(marker["rows"]), int(marker["dim"])
        entries = {"vectors": (files.vectors, marker["vectors"]), "ids": (files.ids, marker["ids"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable marker ({exc})"
    if marker.get("part") != index or marker.get("format") != FORMAT:
        return "marker belongs to another part or format"
    if fingerprint is not None and marker.get("fingerprint") != fingerprint:
        return "marker was written for other input"
    for name, (path, entry) in entries.items():
        if not path.exists():
            return f"{name} file {path.name} is missing"
        if path.stat().st_size != entry.get("bytes"):
            return (
                f"{name} file {path.name} has {path.stat().st_size} bytes, marker says {entry.get('bytes')}"
            )
        if verify_checksums and _sha256(path) != entry.get("sha256"):
            return f"{name} file {path.name} fails its SHA-256 checksum"
    try:
        arr = np.load(files.vectors, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"vectors file is not a valid .npy ({exc})"
    if arr.shape != (rows, mdim) or arr.dtype != VECTOR_DTYPE:
        return f"vectors have shape {arr.shape} {arr.dtype}, marker says ({rows}, {mdim}) float32"
    if dim is not None and mdim != dim:
        return f"vectors are {mdim}-d, expected {dim}-d"
    ids = _read_ids(files.ids)
    if len(ids) != rows:
        return f"{len(ids)} ids for {rows} rows"
    if expected_ids is not None and list(expected_ids) != ids:
        return "ids differ from the rows this part should hold"
    return None


def part_indices(directory: Path) -> list[int]:
    """Indices of every part that has any file in ``directory`` (complete or not)."""
    found = set()
    for path in Path(directory).iterdir():
        m = _PART_RE.match(path.name)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


class RowStack:
    """Rows of several memory-mapped ``(n_i, D)`` arrays seen as one ``(N, D)`` array.

    Indexing with an int, a slice or an integer array gathers only the requested rows, so a
    multi-GB set is never loaded whole; ``np.asarray(stack)`` materialises everything.
    """

    def __init__(self, arrays: Sequence[np.ndarray], dim: int) -> None:
        self.arrays = list(arrays)
        self.dim = dim
        sizes = [a.shape[0] for a in self.arrays]
        self.offsets = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))).astype(np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.offsets[-1]), self.dim)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(VECTOR_DTYPE)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """``(k,)`` global row indices -> ``(k, D)`` float32 copy."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((rows.size, self.dim), dtype=VECTOR_DTYPE)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for a in np.unique(which):
            sel = which == a
            out[sel] = self.arrays[a][rows[sel] - self.offsets[a]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take([key])[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = (
            np.concatenate(self.arrays, axis=0)
            if self.arrays
            else np.empty((0, self.dim), dtype=VECTOR_DTYPE)
        )
        return full if dtype is None else full.astype(dtype)


@dataclass
class EmbeddingSet:
    """Pooled embeddings of one or more shard directories, rows aligned with ``ids``.

    Attributes:
        ids: ``(N,)`` object array of str, in part order (each shard's length-sorted order).
        vectors: ``(N, D)`` float32 rows (memory-mapped; see `RowStack`).
        metadata: the model fields shared by all directories (`MODEL_FIELDS`) plus
            ``"sources"``: each directory's full metadata.json.
    """

    ids: np.ndarray
    vectors: RowStack
    metadata: dict[str, Any]
    _index: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def row_of(self, ident: str) -> int:
        if self._index is None:
            self._index = {i: r for r, i in enumerate(self.ids.tolist())}
        try:
            return self._index[ident]
        except KeyError:
            raise KeyError(f"id {ident!r} is not in this embedding set") from None

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Vectors of the given ids: ``(k, D)`` float32, in the order asked."""
        return self.vectors.take([self.row_of(i) for i in ids])


class BackgroundWriter:
    """One writer thread per shard: the device loop hands a finished part over and goes on, with at
    most `MAX_PENDING_WRITES` writes queued (beyond that `enqueue` waits for the oldest; a write's
    exception surfaces there or in `drain`). ``written`` lists the parts handed over, ``seconds``
    the time spent writing."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, "part-writer")
        self.pending: deque[Future] = deque()
        self.written: list[int] = []
        self.seconds = 0.0

    def enqueue(self, index: int, write: Callable[..., None], *args: Any) -> None:
        while len(self.pending) >= MAX_PENDING_WRITES:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._timed, write, *args))
        self.written.append(index)

    def _timed(self, write: Callable[..., None], *args: Any) -> None:
        t0 = time.perf_counter()
        write(*args)
        self.seconds += time.perf_counter() - t0

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def shard_dirs(root: Path | str) -> list[Path]:
    """The shard output directories of an embedding root (``embeddings/<kind>/``), sorted: every
    subdirectory except the workers' log folder. A shard directory that is not a finished output is
    kept, so that `open_embeddings` refuses it instead of the data being silently short."""
    return sorted(p for p in Path(root).glob("*") if p.is_dir() and p.name != WORKER_LOG_DIR)


def open_embeddings(
    dirs: Path | str | Sequence[Path | str], *, verify_checksums: bool = True
) -> EmbeddingSet:
    """Open completed shard output directories as one memory-mapped `EmbeddingSet`.

    Every part listed by metadata.json must have a valid marker (sizes, and SHA-256 unless
    ``verify_checksums`` is off); directories must share the model fields; ids must be unique.
    Raises OutputIntegrityError naming the directory and part otherwise.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    arrays: list[np.ndarray] = []
    ids: list[str] = []
    sources: list[dict[str, Any]] = []
    shared: dict[str, Any] | None = None
    for d in map(Path, dirs):
        if not d.is_dir():
            raise OutputIntegrityError(f"embedding directory {d} does not exist; run `virnucpro embed` first")
        meta = read_metadata(d)
        if meta is None:
            raise OutputIntegrityError(f"{d} has no {METADATA_FILE}; it is not an embedding output directory")
        if not meta.get("complete"):
            raise OutputIntegrityError(
                f"{d} is incomplete (the run did not finish); rerun embed with --resume"
            )
        fields = {k: meta.get(k) for k in MODEL_FIELDS}
        if shared is None:
            shared = fields
        elif fields != shared:
            diff = {k: (shared[k], fields[k]) for k in MODEL_FIELDS if shared[k] != fields[k]}
            raise OutputIntegrityError(f"{d} was made with different settings than {dirs[0]}: {diff}")
        dim = int(meta["hidden_size"])
        for index in range(int(meta["n_parts"])):
            problem = check_part(
                d, index, dim=dim, fingerprint=meta.get("fingerprint"), verify_checksums=verify_checksums
            )
            if problem:
                raise OutputIntegrityError(
                    f"{d}: part {index} is not valid ({problem}); rerun embed with --resume"
                )
            files = PartFiles(d, index)
            arrays.append(np.load(files.vectors, mmap_mode="r", allow_pickle=False))
            ids.extend(_read_ids(files.ids))
        rows = sum(a.shape[0] for a in arrays[len(arrays) - int(meta["n_parts"]) :])
        if rows != int(meta["n_rows"]):
            raise OutputIntegrityError(
                f"{d}: parts hold {rows} rows, metadata says {meta['n_rows']}; rerun embed with --resume"
            )
        sources.append(meta)
    id_array = np.array(ids, dtype=object)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise OutputIntegrityError(f"id {dup!r} appears more than once across {list(map(str, dirs))}")
    metadata = dict(shared or {})
    metadata["sources"] = sources
    dim = int(shared["hidden_size"]) if shared else 0
    return EmbeddingSet(ids=id_array, vectors=RowStack(arrays, dim), metadata=metadata)


__all__ = [
    "FORMAT",
    "MAX_PENDING_WRITES",
    "WORKER_LOG_DIR",
    "BackgroundWriter",
    "EmbeddingSet",
    "PartFiles",
    "RowStack",
    "check_part",
    "open_embeddings",
    "part_indices",
    "read_metadata",
    "shard_dirs",
    "write_metadata",
    "write_part",
]
