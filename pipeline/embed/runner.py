"""Single-device shard runner: one shard parquet -> pooled embeddings in resumable parts.

Flow of `embed_shard`:
    read shard column -> load encoder -> tokenize (CPU workers) -> sort rows by token count ->
    check / sweep the output directory (resume) -> FFD-pack the rows still to do ->
    for each packed batch: async host->device copy on a side stream, packed forward + pool on the
    compute stream, async device->host copy of the pooled rows into pinned memory on a third
    stream -> rows land in their part's host array once their copy event has completed ->
    a complete part is checked for NaN/Inf and written (atomically, on a writer thread).

Nothing waits on the device per batch: the host only blocks when more than `MAX_INFLIGHT`
batches are queued, or at the end. SIGTERM/SIGINT finish the part being completed, then raise
`pipeline.core.errors.Interrupted`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import EmbedConfig, column_for_kind
from pipeline.core.errors import ConfigError, InputError, Interrupted, NumericalError
from pipeline.embed.loader import (
    TokenArena,
    choose_workers,
    input_fingerprint,
    packed_batches,
    read_shard,
    tokenize_shard,
)
from pipeline.embed.parts import FORMAT, RUN_RECORD_FILE, write_metadata, write_part
from pipeline.embed.planning import choose_token_budget, length_sorted_order, packing_efficiency, plan_batches
from pipeline.embed.resume import check_output_dir, sweep_valid_parts

log = logging.getLogger(__name__)

#: Batches queued on the device before the host waits for the oldest one's output copy.
MAX_INFLIGHT = 4
#: Part writes allowed to queue behind the writer thread before the loop waits.
MAX_PENDING_WRITES = 2
_ROW_ORDER = "token-length-desc-stable"


# ----------------------------------------------------------------------------------------------
# parts


@dataclass
class _Parts:
    """Row -> part bookkeeping and the host arrays parts are assembled in."""

    part_rows: list[np.ndarray]  # part p -> (n_p,) shard rows, in part order
    dim: int
    part_of: np.ndarray = field(init=False)
    pos_of: np.ndarray = field(init=False)
    remaining: dict[int, int] = field(default_factory=dict)
    arrays: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = sum(r.size for r in self.part_rows)
        self.part_of = np.full(n, -1, dtype=np.int64)
        self.pos_of = np.zeros(n, dtype=np.int64)
        for p, rows in enumerate(self.part_rows):
            self.part_of[rows] = p
            self.pos_of[rows] = np.arange(rows.size)

    def expect(self, parts: list[int]) -> None:
        for p in parts:
            self.remaining[p] = int(self.part_rows[p].size)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> list[int]:
        """Place pooled ``(B, D)`` rows; return the parts this completed."""
        done = []
        owners = self.part_of[rows]
        for p in np.unique(owners).tolist():
            sel = owners == p
            arr = self.arrays.get(p)
            if arr is None:
                arr = self.arrays[p] = np.empty((self.part_rows[p].size, self.dim), dtype=np.float32)
            arr[self.pos_of[rows[sel]]] = vectors[sel]
            self.remaining[p] -= int(sel.sum())
            if self.remaining[p] == 0:
                done.append(p)
        return done

    def pop(self, p: int) -> np.ndarray:
        del self.remaining[p]
        return self.arrays.pop(p)


# ----------------------------------------------------------------------------------------------
# device pipeline


@dataclass
class _Inflight:
    rows: np.ndarray
    tokens: int
    out: Any  # (B, D) float32 host tensor (pinned on CUDA)
    ready: Any  # CUDA event recorded after the device->host copy, or None on CPU


class _DeviceLoop:
    """Issues packed batches without host syncs; hands back pooled rows once copied to the host."""

    def __init__(self, encoder: Any, device: Any) -> None:
        import torch

        self.torch = torch
        self.encoder = encoder
        self.device = device
        self.cuda = device.type == "cuda"
        self.inflight: deque[_Inflight] = deque()
        self.marks: list[tuple[Any, Any]] = []  # (start, end) compute events per batch
        if self.cuda:
            self.compute = torch.cuda.current_stream(device)
            self.h2d = torch.cuda.Stream(device)
            self.d2h = torch.cuda.Stream(device)

    def issue(self, batch: Any) -> None:
        torch = self.torch
        if not self.cuda:
            pooled = self.encoder.embed_packed(
                batch.input_ids.to(self.device), batch.cu_seqlens.to(self.device), batch.max_seqlen
            )
            self.inflight.append(_Inflight(batch.rows, batch.tokens, pooled.float().cpu(), None))
            return
        with torch.cuda.stream(self.h2d):
            ids = batch.input_ids.to(self.device, non_blocking=True)
            cu = batch.cu_seqlens.to(self.device, non_blocking=True)
        self.compute.wait_stream(self.h2d)
        # the tensors were made on the copy stream; tell the allocator the compute stream uses them
        ids.record_stream(self.compute)
        cu.record_stream(self.compute)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.compute)
        pooled = self.encoder.embed_packed(ids, cu, batch.max_seqlen)
        end.record(self.compute)
        self.marks.append((start, end))
        out = torch.empty(pooled.shape, dtype=torch.float32, pin_memory=True)
        self.d2h.wait_stream(self.compute)
        with torch.cuda.stream(self.d2h):
            out.copy_(pooled, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.d2h)
        pooled.record_stream(self.d2h)
        self.inflight.append(_Inflight(batch.rows, batch.tokens, out, ready))

    def completed(self, *, block: bool) -> Iterator[_Inflight]:
        """Yield finished batches in issue order; with ``block`` wait for all of them."""
        while self.inflight:
            head = self.inflight[0]
            if head.ready is not None and not head.ready.query():
                if not block and len(self.inflight) <= MAX_INFLIGHT:
                    return
                head.ready.synchronize()
            yield self.inflight.popleft()

    def idle_fraction(self) -> float | None:
        """Share of the device timeline between the first batch's start and the last batch's end
        with no batch computing (measured with CUDA events; None on CPU)."""
        if not self.cuda or not self.marks:
            return None
        self.torch.cuda.synchronize(self.device)
        busy = sum(s.elapsed_time(e) for s, e in self.marks)
        span = self.marks[0][0].elapsed_time(self.marks[-1][1])
        return max(0.0, 1.0 - busy / span) if span > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# the runner


def _resolve_kind(column: str | None, kind: str) -> str:
    kind_column = column_for_kind(kind)  # an unknown kind fails here even when a column is given
    column = column or kind_column
    if column not in ("nucleotide", "protein"):
        raise ConfigError(f"column {column!r} is not a sequence column; use 'nucleotide' or 'protein'")
    return column


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total_tokens: int, desc: str) -> Any:
    """tqdm over tokens (its rate is tokens/s; sequences/s goes in the postfix)."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total_tokens, unit="tok", unit_scale=True, desc=desc, leave=False)


def _code_version() -> str:
    from pipeline import __version__
    from pipeline.core.runinfo import git_commit

    return f"{__version__}+{git_commit() or 'unknown'}"


def embed_shard(
    shard_path: Path | str,
    column: str | None,
    kind: str,
    cfg: EmbedConfig,
    out_dir: Path | str,
    *,
    encoder: Any = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Embed one column of a shard into ``out_dir``; returns the run record (also written there).

    Args:
        shard_path: parquet file with columns ``id``, ``nucleotide``, ``protein``.
        column: which sequence column to embed; None = the kind's own (esm2 -> protein,
            dnabert-s -> nucleotide).
        kind: ``"esm2"`` or ``"dnabert-s"`` (the `pipeline.models.registry` key).
        cfg: device, encoder, token budget, workers, part size, resume, progress.
        out_dir: the shard's output directory (created; must be empty unless ``cfg.resume``).
        encoder: an already loaded `PackedEncoder` on ``cfg.device`` (benchmarks reuse one);
            None = load it with `pipeline.models.registry.load_encoder(kind, cfg.encoder, device)`.
        stop: set to stop after the part being completed (a worker passes its signal flag); None
            installs SIGTERM/SIGINT handlers for this call (`StopSignals`; a second signal aborts).
    Raises:
        InputError, ConfigError, ResumeMismatchError, NumericalError (naming the part),
        Interrupted (after SIGTERM/SIGINT, also when the part being finished was the last one; the
        parts written so far are complete and ``--resume`` continues exactly).
    """
    if stop is not None:
        return _embed_shard(Path(shard_path), column, kind, cfg, Path(out_dir), stop, encoder)
    from pipeline.embed.multigpu.executor import StopSignals

    with StopSignals(abort_on_second=True).installed() as signals:
        return _embed_shard(Path(shard_path), column, kind, cfg, Path(out_dir), signals.event, encoder)


def _embed_shard(
    shard_path: Path,
    column: str | None,
    kind: str,
    cfg: EmbedConfig,
    out_dir: Path,
    stop: threading.Event,
    encoder: Any,
) -> dict[str, Any]:
    import torch

    from pipeline.core.runinfo import environment_info, new_run_id, utc_now

    t_start = time.perf_counter()
    started_at = utc_now()
    column = _resolve_kind(column, kind)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    ids, sequences = read_shard(shard_path, column)
    fingerprint = input_fingerprint(ids, sequences)
    timings["read_s"] = time.perf_counter() - t

    wanted: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "model": cfg.encoder.model,
        "column": column,
        "precision": cfg.encoder.precision,
        "seed": cfg.encoder.seed,
        "fingerprint": fingerprint,
        "n_rows": len(ids),
        "part_size": cfg.part_size,
        "order": _ROW_ORDER,
        "dtype": "float32",
        "shard": str(shard_path),
    }
    # fail fast on a refused directory before paying for the model
    check_output_dir(out_dir, wanted, resume=cfg.resume)

    t = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {cfg.device!r} asked for but CUDA is not available here; use --device cpu"
            )
        if device.index is None:  # events, streams and mem_get_info want an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    if encoder is None:
        from pipeline.models.registry import load_encoder

        encoder = load_encoder(kind, cfg.encoder, device)
    encoder.eval()
    info = encoder.info
    timings["load_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    workers = cfg.num_workers if cfg.num_workers is not None else choose_workers(encoder.tokenizer, sequences)
    arena: TokenArena = tokenize_shard(
        encoder.tokenizer, sequences, num_workers=workers, shard=(str(shard_path), column)
    )
    lengths = arena.lengths
    timings["tokenize_s"] = time.perf_counter() - t
    too_long = np.flatnonzero(lengths > info.max_tokens)
    if too_long.size:
        r = int(too_long[0])
        raise InputError(
            f"shard {shard_path}: {too_long.size} row(s) exceed the model's {info.max_tokens} tokens, "
            f"e.g. {ids[r]!r} with {int(lengths[r])}; use a smaller --chunk-size"
        )

    order = length_sorted_order(lengths)
    part_rows = [order[s : s + cfg.part_size] for s in range(0, order.size, cfg.part_size)]
    part_ids = [[ids[r] for r in rows.tolist()] for rows in part_rows]

    wanted.update({"hidden_size": info.hidden_size, "repr_layer": info.repr_layer})
    existing = check_output_dir(out_dir, wanted, resume=cfg.resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = (
        sweep_valid_parts(out_dir, part_ids, dim=info.hidden_size, fingerprint=fingerprint)
        if existing is not None
        else set()
    )
    metadata = {
        **wanted,
        "num_layers": info.num_layers,
        "params": info.params,
        "backend": encoder.backend,
        "device": str(device),
        "code_version": _code_version(),
        "n_parts": len(part_rows),
        "complete": False,
    }
    write_metadata(out_dir, metadata)

    todo_parts = [p for p in range(len(part_rows)) if p not in done]
    todo_rows = np.concatenate([part_rows[p] for p in todo_parts]) if todo_parts else np.empty(0, np.int64)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    budget = choose_token_budget(
        device_type=device.type,
        hidden_size=info.hidden_size,
        dtype_bytes=2 if cfg.encoder.precision in ("fp16", "bf16") else 4,
        free_bytes=free,
        override=cfg.token_budget,
    )
    local_plan = plan_batches(lengths[todo_rows], budget)
    plan = [todo_rows[np.asarray(b, dtype=np.int64)] for b in local_plan]
    efficiency = packing_efficiency(lengths[todo_rows], local_plan, budget)
    todo_tokens = int(lengths[todo_rows].sum())
    log.info(
        "%s: %d rows, %d parts (%d already done), %d batches of <= %d tokens, packing %.1f%%, "
        "backend %s on %s",
        shard_path.name,
        len(ids),
        len(part_rows),
        len(done),
        len(plan),
        budget,
        100 * efficiency,
        encoder.backend,
        device,
    )

    parts = _Parts(part_rows, info.hidden_size)
    parts.expect(todo_parts)
    write_seconds = [0.0]
    written: list[int] = []
    status = "complete"

    def write(p: int, vectors: np.ndarray) -> None:
        t0 = time.perf_counter()
        write_part(out_dir, p, part_ids[p], vectors, fingerprint)
        write_seconds[0] += time.perf_counter() - t0

    device_check = getattr(encoder, "check_finite", None)
    embed_started = time.time()
    t_embed = time.perf_counter()
    loop = _DeviceLoop(encoder, device)
    pending: deque[tuple[int, Future]] = deque()
    bar = _progress_bar(cfg.progress, todo_tokens, f"{kind} {shard_path.stem}")
    rows_done = 0

    def finish(p: int, executor: ThreadPoolExecutor) -> None:
        vectors = parts.pop(p)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = [part_ids[p][i] for i in np.flatnonzero(~finite)[:5]]
            raise NumericalError(
                f"part {p} of {shard_path.name}: {int((~finite).sum())} embedding(s) contain "
                f"NaN/Inf, e.g. {bad}; rerun with --precision bf16 or fp32"
            )
        if device_check is not None:
            # the encoder's device-side flag (one sync per part); it also covers batches queued after
            # this part's last one, so the host check above is the one that names rows precisely
            device_check(f"{shard_path.name} part {p} (or a batch queued with it)")
        while len(pending) >= MAX_PENDING_WRITES:
            pending.popleft()[1].result()
        pending.append((p, executor.submit(write, p, vectors)))
        written.append(p)

    def collect(block: bool, executor: ThreadPoolExecutor) -> list[int]:
        nonlocal rows_done
        finished = []
        for item in loop.completed(block=block):
            vectors = item.out.numpy()
            for p in parts.add(item.rows, vectors):
                finish(p, executor)
                finished.append(p)
            rows_done += item.rows.size
            bar.update(item.tokens)
            elapsed = max(time.perf_counter() - t_embed, 1e-9)
            bar.set_postfix_str(f"{rows_done / elapsed:,.0f} seq/s", refresh=False)
        return finished

    try:
        with torch.inference_mode(), ThreadPoolExecutor(1, "part-writer") as executor:
            target: int | None = None  # on a signal: the part being completed when it came
            for batch in packed_batches(arena, plan, pin_memory=device.type == "cuda"):
                loop.issue(batch)
                finished = collect(False, executor)
                if stop.is_set():
                    if target is None:
                        target = min(parts.remaining, default=None)
                    if target is None or target in finished or target not in parts.remaining:
                        break
            collect(True, executor)
            while pending:
                pending.popleft()[1].result()
            if stop.is_set():
                # also when the part being finished was the last one: the run stops here either way
                status = "interrupted"
    finally:
        bar.close()
    embed_seconds = time.perf_counter() - t_embed
    timings["embed_s"] = embed_seconds
    timings["write_s"] = write_seconds[0]
    idle = loop.idle_fraction()

    if not parts.remaining:
        metadata["complete"] = True
        write_metadata(out_dir, metadata)
    embedded_rows = int(sum(part_rows[p].size for p in written))
    embedded_tokens = int(sum(int(lengths[part_rows[p]].sum()) for p in written))
    total_seconds = time.perf_counter() - t_start
    stage = {
        "stage": "embed",
        "model": cfg.encoder.model,
        "kind": kind,
        "seconds": round(total_seconds, 4),
        "sequences": embedded_rows,
        "tokens": embedded_tokens,
        "tokens_per_s": round(embedded_tokens / embed_seconds, 1) if embed_seconds > 0 else None,
        "packing_efficiency": round(efficiency, 5),
        "backend": encoder.backend,
        "precision": cfg.encoder.precision,
        "device": str(device),
        "shard": str(shard_path),
        "token_budget": budget,
        "batches": len(plan),
        "parts_written": len(written),
        "parts_skipped": len(done),
        "device_idle_fraction": None if idle is None else round(idle, 5),
        "embed_started_at": embed_started,
        "embed_finished_at": embed_started + embed_seconds,
        "num_workers": workers,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    record = {
        "schema": "virnucpro.run/1",
        "run_id": new_run_id(),
        "kind": "embed",
        "status": status,
        "started_at": started_at,
        "finished_at": utc_now(),
        "environment": environment_info(),
        "config": {
            **asdict(cfg),
            "shard_path": str(shard_path),
            "column": column,
            "model_kind": kind,
            "out_dir": str(out_dir),
        },
        "stages": [stage],
        "timings": stage["timings"],
    }
    atomic_write_text(out_dir / RUN_RECORD_FILE, json.dumps(record, indent=2, default=str))
    if status == "interrupted":
        raise Interrupted(
            f"stopped by a signal after writing {len(written)} part(s) of {shard_path.name}; "
            f"{len(parts.remaining)} part(s) left - rerun with --resume to finish"
        )
    return record


__all__ = ["embed_shard"]
