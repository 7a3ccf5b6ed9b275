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

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
from pipeline.embed.parts import FORMAT, RUN_RECORD_FILE, BackgroundWriter, write_metadata, write_part
from pipeline.embed.planning import choose_token_budget, length_sorted_order, packing_efficiency, plan_batches
from pipeline.embed.resume import check_output_dir, sweep_valid_parts
from pipeline.embed.timeline import busy_fraction

log = logging.getLogger(__name__)

#: Batches queued on the device before the host waits for the oldest one's output copy.
MAX_INFLIGHT = 4
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
        return idle_fraction(self.marks)


def idle_fraction(marks: list[tuple[Any, Any]]) -> float | None:
    """1 - busy fraction of ``(start, end)`` timing events (``elapsed_time(other) -> ms``), measured
    against the first start; None when nothing was timed. See `pipeline.embed.timeline`."""
    if not marks:
        return None
    origin = marks[0][0]
    busy = busy_fraction(
        [(origin.elapsed_time(s) / 1000.0, origin.elapsed_time(e) / 1000.0) for s, e in marks]
    )
    return None if busy is None else 1.0 - busy


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


@dataclass
class _ShardPlan:
    """The plan phase's result: rows, tokens, parts, what is already done, the packed batches."""

    shard_path: Path
    column: str
    kind: str
    cfg: EmbedConfig
    out_dir: Path
    device: Any
    encoder: Any
    ids: list[str]
    fingerprint: str
    arena: TokenArena
    part_rows: list[np.ndarray]
    part_ids: list[list[str]]
    done: set[int]
    todo_parts: list[int]
    batches: list[np.ndarray]
    budget: int
    efficiency: float
    workers: int
    metadata: dict[str, Any]

    @property
    def lengths(self) -> np.ndarray:
        return self.arena.lengths

    @property
    def todo_tokens(self) -> int:
        return int(sum(int(self.lengths[self.part_rows[p]].sum()) for p in self.todo_parts))


def _open_device(name: str) -> Any:
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
        if device.index is None:  # events, streams and mem_get_info want an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _plan(
    shard_path: Path,
    column: str,
    kind: str,
    cfg: EmbedConfig,
    out_dir: Path,
    encoder: Any,
    timings: dict[str, float],
) -> _ShardPlan:
    """Read, check the output directory, load the encoder, tokenize, sweep valid parts, pack."""
    import torch

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
    device = _open_device(cfg.device)
    if encoder is None:
        from pipeline.models.registry import load_encoder

        encoder = load_encoder(kind, cfg.encoder, device)
    encoder.eval()
    info = encoder.info
    timings["load_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    workers = cfg.num_workers if cfg.num_workers is not None else choose_workers(encoder.tokenizer, sequences)
    arena = tokenize_shard(encoder.tokenizer, sequences, num_workers=workers, shard=(str(shard_path), column))
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
        max_budget=encoder.best_token_budget,
    )
    local_plan = plan_batches(lengths[todo_rows], budget)  # looked up at call time (benchmark hooks)
    batches = [todo_rows[np.asarray(b, dtype=np.int64)] for b in local_plan]
    efficiency = packing_efficiency(lengths[todo_rows], local_plan, budget)
    log.info(
        "%s: %d rows, %d parts (%d already done), %d batches of <= %d tokens, packing %.1f%%, "
        "backend %s on %s",
        shard_path.name,
        len(ids),
        len(part_rows),
        len(done),
        len(batches),
        budget,
        100 * efficiency,
        encoder.backend,
        device,
    )
    return _ShardPlan(
        shard_path, column, kind, cfg, out_dir, device, encoder, ids, fingerprint, arena, part_rows, part_ids,
        done, todo_parts, batches, budget, efficiency, workers, metadata,
    )  # fmt: skip


class _PartWriter(BackgroundWriter):
    """Checks each completed part for NaN/Inf and writes it atomically on the writer thread."""

    def __init__(self, plan: _ShardPlan) -> None:
        super().__init__()
        self.plan = plan
        self.device_check = getattr(plan.encoder, "check_finite", None)

    def submit(self, p: int, vectors: np.ndarray) -> None:
        plan = self.plan
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = [plan.part_ids[p][i] for i in np.flatnonzero(~finite)[:5]]
            raise NumericalError(
                f"part {p} of {plan.shard_path.name}: {int((~finite).sum())} embedding(s) contain "
                f"NaN/Inf, e.g. {bad}; rerun with --precision bf16 or fp32"
            )
        if self.device_check is not None:
            # the encoder's device-side flag (one sync per part); it also covers batches queued after
            # this part's last one, so the host check above is the one that names rows precisely
            self.device_check(f"{plan.shard_path.name} part {p} (or a batch queued with it)")
        self.enqueue(p, write_part, plan.out_dir, p, plan.part_ids[p], vectors, plan.fingerprint)


class _Progress:
    """The runner's tqdm bar over tokens, with sequences/s in its postfix."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.rows = 0
        self.t0 = time.perf_counter()

    def add(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.bar.update(tokens)
        self.bar.set_postfix_str(
            f"{self.rows / max(time.perf_counter() - self.t0, 1e-9):,.0f} seq/s", refresh=False
        )

    def close(self) -> None:
        self.bar.close()


@dataclass
class _RunResult:
    status: str
    started_at: float
    seconds: float
    idle_fraction: float | None
    remaining_parts: int


def _run(plan: _ShardPlan, writer: _PartWriter, stop: threading.Event) -> _RunResult:
    """Issue every batch, hand each completed part to the writer; stop after the part being
    completed when ``stop`` is set (also when that part is the last one: the status says so)."""
    import torch

    parts = _Parts(plan.part_rows, plan.encoder.info.hidden_size)
    parts.expect(plan.todo_parts)
    loop = _DeviceLoop(plan.encoder, plan.device)
    bar = _Progress(_progress_bar(plan.cfg.progress, plan.todo_tokens, f"{plan.kind} {plan.shard_path.stem}"))
    started_at, t0 = time.time(), time.perf_counter()

    def collect(block: bool) -> list[int]:
        finished = []
        for item in loop.completed(block=block):
            for p in parts.add(item.rows, item.out.numpy()):
                writer.submit(p, parts.pop(p))
                finished.append(p)
            bar.add(item.rows.size, item.tokens)
        return finished

    try:
        with torch.inference_mode():
            target: int | None = None  # on a signal: the part being completed when it came
            for batch in packed_batches(plan.arena, plan.batches, pin_memory=plan.device.type == "cuda"):
                loop.issue(batch)
                finished = collect(False)
                if stop.is_set():
                    if target is None:
                        target = min(parts.remaining, default=None)
                    if target is None or target in finished or target not in parts.remaining:
                        break
            collect(True)
            writer.drain()
    finally:
        bar.close()
    return _RunResult(
        status="interrupted" if stop.is_set() else "complete",
        started_at=started_at,
        seconds=time.perf_counter() - t0,
        idle_fraction=loop.idle_fraction(),
        remaining_parts=len(parts.remaining),
    )


def _record(
    plan: _ShardPlan,
    writer: _PartWriter,
    run: _RunResult,
    timings: dict[str, float],
    started_at: str,
    t_start: float,
) -> dict[str, Any]:
    """Mark the directory complete when every part is there; write and return the run record."""
    from pipeline.core.run_record import RunRecord, StageRow, write_run_record
    from pipeline.core.runinfo import environment_info, new_run_id, utc_now

    if not run.remaining_parts:
        write_metadata(plan.out_dir, {**plan.metadata, "complete": True})
    timings["embed_s"] = run.seconds
    timings["write_s"] = writer.seconds
    rows = int(sum(plan.part_rows[p].size for p in writer.written))
    tokens = int(sum(int(plan.lengths[plan.part_rows[p]].sum()) for p in writer.written))
    stage = StageRow(
        "embed",
        round(time.perf_counter() - t_start, 4),
        model=plan.cfg.encoder.model,
        sequences=rows,
        tokens=tokens,
        tokens_per_s=round(tokens / run.seconds, 1) if run.seconds > 0 else None,
        packing_efficiency=round(plan.efficiency, 5),
        backend=plan.encoder.backend,
        precision=plan.cfg.encoder.precision,
        device=str(plan.device),
        extra={
            "kind": plan.kind,
            "shard": str(plan.shard_path),
            "token_budget": plan.budget,
            "batches": len(plan.batches),
            "parts_written": len(writer.written),
            "parts_skipped": len(plan.done),
            "device_idle_fraction": None if run.idle_fraction is None else round(run.idle_fraction, 5),
            "embed_started_at": run.started_at,
            "embed_finished_at": run.started_at + run.seconds,
            "num_workers": plan.workers,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        },
    )
    config = {
        **asdict(plan.cfg),
        "shard_path": str(plan.shard_path),
        "column": plan.column,
        "model_kind": plan.kind,
        "out_dir": str(plan.out_dir),
    }
    record = RunRecord(
        run_id=new_run_id(),
        kind="embed",
        started_at=started_at,
        finished_at=utc_now(),
        environment=environment_info(),
        config=config,
        stages=[stage],
        extra={"status": run.status, "timings": stage.extra["timings"]},
    )
    write_run_record(plan.out_dir / RUN_RECORD_FILE, record)
    if run.status == "interrupted":
        raise Interrupted(
            f"stopped by a signal after writing {len(writer.written)} part(s) of {plan.shard_path.name}; "
            f"{run.remaining_parts} part(s) left - rerun with --resume to finish"
        )
    return record.to_dict()


def _embed_shard(
    shard_path: Path,
    column: str | None,
    kind: str,
    cfg: EmbedConfig,
    out_dir: Path,
    stop: threading.Event,
    encoder: Any,
) -> dict[str, Any]:
    """The phases: plan -> run (issue batches, write parts) -> record."""
    from pipeline.core.runinfo import utc_now

    t_start, started_at = time.perf_counter(), utc_now()
    timings: dict[str, float] = {}
    plan = _plan(shard_path, _resolve_kind(column, kind), kind, cfg, out_dir, encoder, timings)
    writer = _PartWriter(plan)
    try:
        run = _run(plan, writer, stop)
    finally:
        writer.close()
    return _record(plan, writer, run, timings, started_at, t_start)


__all__ = ["embed_shard"]
