"""Reading a shard, tokenizing it in CPU worker processes, and collating packed batches.

Two passes, both through a torch ``DataLoader``:

1. `tokenize_shard`: spawned CPU workers each read the shard's column (once per worker) and
   tokenize fixed chunks of rows with the encoder's picklable `Tokenizer`. The main process keeps
   every token in one flat ``int32`` arena. Exact token counts of all rows are needed before the
   first batch, because first-fit-decreasing packing looks at the whole shard.
2. `packed_batches`: a DataLoader over the batch plan whose items are `PackedBatch` es gathered
   from the arena with a few vectorised numpy operations (micro-seconds per batch, so it runs in
   the main process; no pickling of token arrays), pinned on CUDA for asynchronous copies.

Workers never touch CUDA: they are spawned (not forked) and only run the tokenizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.models.base import Tokenizer
from pipeline.models.packing import cumulative_lengths

SHARD_COLUMNS = ("id", "nucleotide", "protein")
#: Rows per tokenization work item: large enough to amortise IPC, small enough to balance.
TOKENIZE_CHUNK = 8192


def read_shard(shard_path: Path, column: str) -> tuple[list[str], list[str]]:
    """Ids and sequences of one column of a shard parquet file, in file order."""
    import pyarrow.parquet as pq

    path = Path(shard_path)
    if not path.is_file():
        raise InputError(
            f"shard {path} does not exist; create shards with `virnucpro prepare` / write_shards"
        )
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise InputError(f"shard {path} is not a readable parquet file ({exc})") from None
    missing = [c for c in ("id", column) if c not in schema.names]
    if missing:
        raise InputError(
            f"shard {path} has no column {missing[0]!r} (columns: {', '.join(schema.names)}); "
            "a shard holds id, nucleotide and protein: make shards with write_shards (or "
            "`virnucpro predict`), not from frames.parquet"
        )
    table = pq.read_table(path, columns=["id", column])
    ids = [str(x) for x in table.column("id").to_pylist()]
    seqs = table.column(column).to_pylist()
    empty = [i for i, s in zip(ids, seqs) if not s]
    if empty:
        raise InputError(
            f"shard {path}: {len(empty)} row(s) have an empty {column} sequence, e.g. {empty[0]!r}"
        )
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise InputError(f"shard {path}: id {dup!r} appears more than once; ids must be unique")
    return ids, [str(s) for s in seqs]


def input_fingerprint(ids: Sequence[str], sequences: Sequence[str]) -> str:
    """SHA-256 over ``id \\t sequence \\n`` of every row, in order (identifies a shard's content)."""
    h = hashlib.sha256()
    for i, s in zip(ids, sequences):
        h.update(f"{i}\t{s}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TokenArena:
    """Every row's token ids, concatenated.

    Attributes:
        tokens: ``(sum(lengths),) int32`` token ids, row after row (specials included).
        offsets: ``(N+1,) int64``; row ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.
    """

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """``(N,) int64`` tokens per row."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)


class _TokenizeChunks(torch.utils.data.Dataset):
    """Item ``k``: (k, int32 tokens of rows [k*chunk, (k+1)*chunk), int64 lengths)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        n_rows: int,
        chunk: int,
        *,
        sequences: Sequence[str] | None = None,
        shard: tuple[str, str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.n_rows = n_rows
        self.chunk = chunk
        self.shard = shard  # (path, column): workers read it themselves
        self._sequences = sequences  # in-process path (num_workers == 0)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sequences"] = None  # never pickle the shard's text to each worker
        return state

    def _rows(self) -> Sequence[str]:
        if self._sequences is None:
            assert self.shard is not None
            self._sequences = read_shard(Path(self.shard[0]), self.shard[1])[1]
        return self._sequences

    def __len__(self) -> int:
        return (self.n_rows + self.chunk - 1) // self.chunk

    def __getitem__(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        rows = self._rows()[k * self.chunk : (k + 1) * self.chunk]
        encoded = self.tokenizer.encode_batch(list(rows))
        lengths = np.fromiter((e.shape[0] for e in encoded), dtype=np.int64, count=len(encoded))
        tokens = np.concatenate(encoded).astype(np.int32, copy=False) if encoded else np.empty(0, np.int32)
        return k, tokens, lengths


def _keep(item):  # module level: picklable collate for spawned workers
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # tokenizing is single-threaded; do not oversubscribe the host


def choose_workers(
    tokenizer: Tokenizer, sequences: Sequence[str], *, sample: int = 2000, serial_limit_s: float = 5.0
) -> int:
    """Tokenizer workers worth spawning for this shard: 0 when the tokenizer is already parallel
    (``parallel_batch``) or tokenizing in-process is estimated (from a timed sample) to take under
    ``serial_limit_s``, since spawning a worker costs seconds (it imports torch); otherwise about one
    worker per 2 s of estimated work, at most 8 and at most half the CPUs."""
    import os
    import time

    n = len(sequences)
    if n == 0 or tokenizer.parallel_batch:
        return 0
    k = min(sample, n)
    tokenizer.encode_batch(list(sequences[:16]))  # one-time set-up is not per-row cost
    t = time.perf_counter()
    tokenizer.encode_batch(list(sequences[:k]))
    estimate = (time.perf_counter() - t) * n / k
    if estimate < serial_limit_s:
        return 0
    return int(max(1, min(8, (os.cpu_count() or 2) // 2, estimate // 2)))


def tokenize_shard(
    tokenizer: Tokenizer,
    sequences: Sequence[str],
    *,
    num_workers: int,
    shard: tuple[str, str] | None = None,
    chunk: int = TOKENIZE_CHUNK,
) -> TokenArena:
    """Tokenize every row; with ``num_workers > 0`` spawned workers read ``shard`` themselves."""
    n = len(sequences)
    dataset = _TokenizeChunks(
        tokenizer, n, chunk, sequences=sequences, shard=shard if num_workers > 0 else None
    )
    if num_workers > 0 and shard is None:
        raise InputError("tokenize_shard with workers needs the shard (path, column) to read from")
    workers = min(num_workers, len(dataset))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        collate_fn=_keep,
        num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
    parts: list[tuple[np.ndarray, np.ndarray]] = [None] * len(dataset)  # type: ignore[list-item]
    for k, tokens, lengths in loader:
        parts[k] = (np.asarray(tokens), np.asarray(lengths))
    lengths = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    if lengths.size != n:
        raise InputError(f"tokenizer returned {lengths.size} rows for {n} sequences")
    if n and int(lengths.min()) < 1:
        raise InputError(f"row {int(np.argmin(lengths))} tokenized to 0 tokens; check the sequence")
    tokens = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenArena(tokens=tokens, offsets=offsets)


@dataclass
class PackedBatch:
    """One packed batch.

    Attributes:
        input_ids: ``(T,) int64`` tokens of B rows concatenated.
        cu_seqlens: ``(B+1,) int32`` cumulative starts.
        max_seqlen: longest row in the batch.
        rows: ``(B,) int64`` shard row indices, in packing order.
    """

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    rows: np.ndarray

    def pin_memory(self) -> PackedBatch:  # called by DataLoader(pin_memory=True)
        return PackedBatch(
            self.input_ids.pin_memory(), self.cu_seqlens.pin_memory(), self.max_seqlen, self.rows
        )

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[0])


def collate_packed(arena: TokenArena, rows: np.ndarray) -> PackedBatch:
    """Gather ``rows`` from the arena into a `PackedBatch` (vectorised; no per-row Python loop)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = arena.offsets[rows]
    lens = arena.offsets[rows + 1] - starts
    cu = cumulative_lengths(lens)
    total = int(cu[-1])
    # position t of the batch reads arena[starts[b] + (t - cu[b])] for the row b that covers t
    index = np.repeat(starts - cu[:-1], lens) + np.arange(total, dtype=np.int64)
    ids = torch.from_numpy(arena.tokens[index].astype(np.int64))
    return PackedBatch(ids, torch.from_numpy(cu.astype(np.int32)), int(lens.max()) if rows.size else 0, rows)


class _PlanDataset(torch.utils.data.Dataset):
    def __init__(self, arena: TokenArena, plan: Sequence[np.ndarray]) -> None:
        self.arena = arena
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> PackedBatch:
        return collate_packed(self.arena, self.plan[k])


def packed_batches(
    arena: TokenArena, plan: Sequence[np.ndarray], *, pin_memory: bool
) -> Iterator[PackedBatch]:
    """Iterate the plan's batches in order, pinned when ``pin_memory`` (CUDA) is set."""
    loader = torch.utils.data.DataLoader(
        _PlanDataset(arena, plan),
        batch_size=None,
        shuffle=False,
        collate_fn=_keep,
        num_workers=0,
        pin_memory=pin_memory,
    )
    return iter(loader)


__all__ = [
    "PackedBatch",
    "TokenArena",
    "choose_workers",
    "collate_packed",
    "input_fingerprint",
    "packed_batches",
    "read_shard",
    "tokenize_shard",
]
