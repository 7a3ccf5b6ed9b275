"""Multi-device embedding: one worker process per GPU, retries, redistribution, output checks.

`embed_all` runs `pipeline.embed.runner.embed_shard` for every shard in spawned worker processes, one per
device slot (a physical GPU, or a CPU slot for testing). Shard k starts on slot ``k % n_slots``.

Failure handling:
- A worker that dies (Python exception, CUDA OOM, segfault, SIGKILL) is detected from its exit code
  and result file, and the task is rerun on the same slot with ``resume=True``, so the parts it
  finished are kept.
- A slot that fails more than ``max_retries`` times in a row is retired. The rows of its task that
  are not in a valid part yet are written to sub-shards under ``out_root/redistributed/`` (a stride
  split, one per healthy slot) and embedded by the healthy slots; the partial output directory
  stays part of the result.
- Errors that no retry can fix (bad config, input, checkpoint; see
  `pipeline.embed.multigpu.worker.FATAL_ERRORS`) stop the run at once and are re-raised.
- SIGTERM to the coordinator is forwarded to the workers (each finishes its current part); then
  `Interrupted` is raised. Rerunning with ``cfg.resume=True`` continues from the manifest
  ``out_root/coordinator.json``, redistributed sub-shards included.

At the end every input id must be in exactly one output directory, else `OutputIntegrityError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_path, atomic_write_text
from pipeline.core.config import EmbedConfig, column_for_kind
from pipeline.core.errors import (
    ConfigError,
    InputError,
    Interrupted,
    OutputIntegrityError,
    ResumeMismatchError,
    VirNucProError,
    WorkerFailedError,
)
from pipeline.embed.multigpu.worker import FATAL_ERRORS, WorkerJob, run_job

log = logging.getLogger(__name__)

MANIFEST_NAME = "coordinator.json"
MANIFEST_SCHEMA = "virnucpro.coordinator/1"
SUMMARY_SCHEMA = "virnucpro.embed_all/1"

# How long workers get to finish their current part after SIGTERM before they are killed.
_TERMINATE_GRACE_S = 120.0
_POLL_S = 0.5
_MAX_IDS_IN_MESSAGE = 10


@dataclass(frozen=True)
class WorkerEvent:
    """Passed to ``on_worker_start`` when a worker process starts (for monitoring and tests).

    ``attempt`` counts earlier runs of the same task (0 = first run, 1.. = retries).
    """

    worker: int
    pid: int
    task: str
    attempt: int
    device: str
    out_dir: Path


@dataclass(frozen=True)
class _Slot:
    index: int
    device: str
    gpu: int | None


@dataclass
class _Task:
    name: str
    shard_path: Path
    out_dir: Path
    preferred: int | None  # slot index it should run on (None: any healthy slot)
    status: str = "pending"  # pending | done | redistributed
    parent: str | None = None
    attempts: int = 0  # runs started, all slots
    record: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shard_path": str(self.shard_path),
            "out_dir": str(self.out_dir),
            "preferred": self.preferred,
            "status": self.status,
            "parent": self.parent,
        }


@dataclass
class _WorkerStats:
    slot: _Slot
    healthy: bool = True
    consecutive_failures: int = 0
    failures: int = 0
    retries: int = 0
    tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0  # process wall time, start to exit (load included)
    embed_seconds: float = 0.0  # embed-phase seconds reported by embed_shard
    sequences: int = 0
    tokens: int = 0
    embed_start: float | None = None
    embed_end: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class _Running:
    process: multiprocessing.process.BaseProcess
    task: _Task
    job: WorkerJob
    started: float


# ----------------------------------------------------------------------------------------------
# shard / output helpers (pure functions over files)


def shard_ids(shard_path: Path) -> list[str]:
    """The ``id`` column of a shard parquet, in row order."""
    import pyarrow.parquet as pq

    try:
        return [str(x) for x in pq.read_table(shard_path, columns=["id"]).column("id").to_pylist()]
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            f"cannot read the id column of shard {shard_path}: {exc}; "
            "re-create the shards (virnucpro prepare / write_shards)"
        ) from exc


def _read_part_ids(out_dir: Path, index: int) -> list[str]:
    from pipeline.embed.parts import PartFiles

    text = PartFiles(out_dir, index).ids.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def valid_parts(out_dir: Path, *, verify_checksums: bool = True) -> list[int]:
    """Indices of the complete, intact parts of an embedding output directory ([] if none)."""
    from pipeline.embed.parts import check_part, part_indices, read_metadata

    if not out_dir.is_dir():
        return []
    meta = read_metadata(out_dir)
    if meta is None:
        return []
    return [
        i
        for i in part_indices(out_dir)
        if check_part(
            out_dir,
            i,
            dim=meta.get("hidden_size"),
            fingerprint=meta.get("fingerprint"),
            verify_checksums=verify_checksums,
        )
        is None
    ]


def output_ids(out_dir: Path) -> list[str]:
    """Ids of a finished output directory, as `pipeline.embed.parts.open_embeddings` will read them.

    Raises `OutputIntegrityError` when the directory is not complete or a part is missing.
    """
    from pipeline.embed.parts import check_part, read_metadata

    meta = read_metadata(out_dir) if out_dir.is_dir() else None
    if meta is None or not meta.get("complete"):
        raise OutputIntegrityError(f"embedding output {out_dir} is missing or incomplete; rerun with resume")
    ids: list[str] = []
    for index in range(int(meta["n_parts"])):
        # Sizes and headers only: every part's checksum was verified when it was written or resumed.
        problem = check_part(
            out_dir,
            index,
            dim=meta.get("hidden_size"),
            fingerprint=meta.get("fingerprint"),
            verify_checksums=False,
        )
        if problem:
            raise OutputIntegrityError(f"{out_dir}: part {index} is not valid ({problem}); rerun with resume")
        ids.extend(_read_part_ids(out_dir, index))
    return ids


def salvage_parts(src: Path, dst: Path) -> list[str]:
    """Copy the valid parts of an unfinished output directory into a new, complete one.

    The parts keep their vectors and ids and are renumbered 0..m-1; ``dst/metadata.json`` is the
    source's with ``n_rows``/``n_parts`` of what was kept and ``complete: true``, so
    `pipeline.embed.parts.open_embeddings` reads it like any shard. Returns the kept ids ([] and no
    directory when nothing was valid).
    """
    import numpy as np

    from pipeline.embed.parts import PartFiles, read_metadata, write_metadata, write_part

    parts = valid_parts(src)
    if not parts:
        return []
    meta = read_metadata(src) or {}
    kept: list[str] = []
    dst.mkdir(parents=True, exist_ok=True)
    for new_index, old_index in enumerate(parts):
        ids = _read_part_ids(src, old_index)
        vectors = np.load(PartFiles(src, old_index).vectors, mmap_mode="r", allow_pickle=False)
        write_part(dst, new_index, ids, vectors, meta.get("fingerprint"))
        kept.extend(ids)
    write_metadata(
        dst,
        {
            **meta,
            "n_rows": len(kept),
            "n_parts": len(parts),
            "complete": True,
            "salvaged_from": str(src),
            "salvaged_parts": parts,
        },
    )
    return kept


def write_remaining_subshards(
    shard_path: Path, done: set[str], n: int, out_dir: Path, stem: str
) -> list[Path]:
    """Split the rows of ``shard_path`` whose id is not in ``done`` into at most ``n`` sub-shards.

    Row order is kept and rows are dealt out by stride (row i -> sub-shard i % n), so each
    sub-shard gets a similar length mix, as `write_shards` does. Empty sub-shards are not written.
    Returns the written paths ``out_dir/<stem>.r<j>.parquet``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(shard_path)
    keep = pc.invert(
        pc.is_in(table.column("id").cast(pa.string()), value_set=pa.array(sorted(done), type=pa.string()))
    )
    remaining = table.filter(keep)
    paths: list[Path] = []
    for j in range(min(n, remaining.num_rows)):
        piece = remaining.take(pa.array(range(j, remaining.num_rows, n), type=pa.int64()))
        path = out_dir / f"{stem}.r{j}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(piece, tmp)
        paths.append(path)
    return paths


def check_outputs(input_ids: Sequence[str], output_dirs: Sequence[Path]) -> dict[str, int]:
    """Every input id must be in exactly one output directory, and nothing else may be there.

    Raises `OutputIntegrityError` naming missing, duplicated and unexpected ids (or the
    incomplete directory). Returns ``{"ids": n, "dirs": m}``.
    """
    from collections import Counter

    seen: Counter[str] = Counter()
    for d in output_dirs:
        seen.update(output_ids(Path(d)))
    expected = set(input_ids)
    missing = sorted(expected - seen.keys())
    duplicated = sorted(i for i, c in seen.items() if c > 1)
    unexpected = sorted(seen.keys() - expected)
    problems = []
    for label, ids in (("missing", missing), ("duplicated", duplicated), ("unexpected", unexpected)):
        if ids:
            shown = ", ".join(ids[:_MAX_IDS_IN_MESSAGE]) + (" ..." if len(ids) > _MAX_IDS_IN_MESSAGE else "")
            problems.append(f"{len(ids)} {label} id(s): {shown}")
    if problems:
        where = ", ".join(str(d) for d in output_dirs[:3]) + (" ..." if len(output_dirs) > 3 else "")
        raise OutputIntegrityError(
            f"embedding outputs ({where}) do not match the input ids: {'; '.join(problems)}; "
            "rerun with resume, or delete the output directory and run again"
        )
    return {"ids": len(expected), "dirs": len(output_dirs)}


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _record_stats(record: dict[str, Any] | None) -> dict[str, float]:
    """Sequences, tokens, embed-phase seconds and epoch timestamps from an embed_shard run record.

    The embed phase is the record's ``embed_started_at``..``embed_finished_at`` (first batch issued
    to last part written; model load and tokenization excluded).
    """
    out: dict[str, float] = {"sequences": 0.0, "tokens": 0.0, "seconds": 0.0}
    if not record:
        return out
    for s in [s for s in record.get("stages", []) if s.get("stage") == "embed"]:
        out["sequences"] += float(s.get("sequences") or 0)
        out["tokens"] += float(s.get("tokens") or 0)
        start, end = s.get("embed_started_at"), s.get("embed_finished_at")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            out["seconds"] += end - start
            out["embed_started_at"] = min(out.get("embed_started_at", start), start)
            out["embed_finished_at"] = max(out.get("embed_finished_at", end), end)
        else:
            out["seconds"] += float((s.get("timings") or {}).get("embed_s") or s.get("seconds") or 0)
    return out


# ----------------------------------------------------------------------------------------------
# signals


class _StopSignals:
    """SIGTERM/SIGINT become a counter while the coordinator runs (main thread only): the first one
    asks the workers to finish their current part and stop, a second one kills them."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None

    def is_set(self) -> bool:
        return self.count > 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, frame: Any) -> None:
            self.count += 1
            self.first = self.first or signum
            log.warning(
                "signal %d: stopping the workers after their current part%s",
                signum,
                " (second signal: killing them)" if self.count > 1 else "",
            )

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------------------------
# the coordinator


def _make_slots(gpus: Sequence[int] | None, n_workers: int | None, cfg: EmbedConfig) -> list[_Slot]:
    if gpus:
        if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
            raise ConfigError(f"gpus={list(gpus)} must be distinct non-negative GPU indices, e.g. 0,1")
        return [_Slot(k, f"cuda:{g}", g) for k, g in enumerate(gpus)]
    n = 1 if n_workers is None else n_workers
    if n < 1:
        raise ConfigError(f"n_workers={n} must be >= 1 CPU worker processes")
    device = cfg.device if not cfg.device.startswith("cuda") else "cpu"
    return [_Slot(k, device, None) for k in range(n)]


class _Coordinator:
    def __init__(
        self,
        shard_paths: Sequence[Path],
        column: str,
        kind: str,
        cfg: EmbedConfig,
        slots: list[_Slot],
        out_root: Path,
        max_retries: int,
        on_worker_start: Callable[[WorkerEvent], None] | None,
        initializer: Callable[[int, int], None] | None,
        threads: int | None,
    ) -> None:
        self.shard_paths = [Path(p).resolve() for p in shard_paths]
        self.column = column
        self.kind = kind
        self.cfg = cfg
        self.slots = slots
        self.out_root = out_root
        self.max_retries = max_retries
        self.on_worker_start = on_worker_start
        self.initializer = initializer
        self.threads = threads
        self.log_dir = out_root / "logs"
        self.redistributed_dir = out_root / "redistributed"
        self.stats = {s.index: _WorkerStats(s) for s in slots}
        self.tasks: list[_Task] = []
        self.running: dict[int, _Running] = {}
        self.redistributions: list[dict[str, Any]] = []
        # Worker logs are files: keep them at INFO at least, DEBUG when this process is at DEBUG.
        self.log_level = logging.getLevelName(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
        self.ctx = multiprocessing.get_context("spawn")

    # -- manifest (what makes a rerun with resume continue a redistributed run) --

    @property
    def manifest_path(self) -> Path:
        return self.out_root / MANIFEST_NAME

    def _save_manifest(self) -> None:
        atomic_write_text(
            self.manifest_path,
            json.dumps(
                {
                    "schema": MANIFEST_SCHEMA,
                    "kind": self.kind,
                    "column": self.column,
                    "model": self.cfg.encoder.model,
                    "shards": [str(p) for p in self.shard_paths],
                    "tasks": [t.to_json() for t in self.tasks],
                },
                indent=1,
            ),
        )

    def _plan(self) -> None:
        n = len(self.slots)
        fresh = [
            _Task(p.stem, p, self.out_root / p.stem, preferred=k % n) for k, p in enumerate(self.shard_paths)
        ]
        if len({t.name for t in fresh}) != len(fresh):
            raise ConfigError(f"shard file names must be distinct: {[str(p) for p in self.shard_paths]}")
        if not self.manifest_path.exists():
            self.tasks = fresh
            return
        old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        if not self.cfg.resume:
            raise ConfigError(
                f"{self.out_root} already holds an embedding run ({self.manifest_path}); "
                "rerun with resume to continue it, or choose an empty output directory"
            )
        if (old.get("kind"), old.get("model"), old.get("shards")) != (
            self.kind,
            self.cfg.encoder.model,
            [str(p) for p in self.shard_paths],
        ):
            raise ResumeMismatchError(
                f"{self.manifest_path} was made for kind={old.get('kind')!r} model={old.get('model')!r} "
                f"over {len(old.get('shards', []))} shards, not kind={self.kind!r} "
                f"model={self.cfg.encoder.model!r} over {len(self.shard_paths)}; "
                "use a new output directory for a different model or input"
            )
        alive = {s.index for s in self.slots}
        for t in old["tasks"]:
            preferred = t["preferred"] if t["preferred"] in alive else None
            status = t["status"]
            if status == "done" and not self._complete(Path(t["out_dir"])):
                status = "pending"
            self.tasks.append(
                _Task(
                    t["name"],
                    Path(t["shard_path"]),
                    Path(t["out_dir"]),
                    preferred,
                    status=status,
                    parent=t.get("parent"),
                )
            )

    @staticmethod
    def _complete(out_dir: Path) -> bool:
        from pipeline.embed.parts import read_metadata

        try:
            meta = read_metadata(out_dir) if out_dir.is_dir() else None
        except OutputIntegrityError:
            return False
        return bool(meta and meta.get("complete"))

    # -- scheduling --

    def _healthy(self) -> list[_Slot]:
        return [s for s in self.slots if self.stats[s.index].healthy]

    def _next_task(self, slot: _Slot) -> _Task | None:
        pending = [
            t
            for t in self.tasks
            if t.status == "pending" and t not in [r.task for r in self.running.values()]
        ]
        for t in pending:
            if t.preferred == slot.index:
                return t
        for t in pending:
            if t.preferred is None or not self.stats[t.preferred].healthy:
                return t
        return None

    def _start(self, slot: _Slot, task: _Task) -> None:
        stats = self.stats[slot.index]
        attempt = task.attempts
        # A retry (or a rerun over an existing directory) must keep the parts already written.
        resume = self.cfg.resume or task.attempts > 0
        job = WorkerJob(
            worker=slot.index,
            attempt=attempt,
            task=task.name,
            shard_path=task.shard_path,
            out_dir=task.out_dir,
            column=self.column,
            kind=self.kind,
            cfg=replace(self.cfg, device=slot.device, resume=resume),
            gpu=slot.gpu,
            log_path=self.log_dir / f"worker-{slot.index}.log",
            result_path=self.log_dir / f"worker-{slot.index}.{task.name}.attempt-{attempt}.json",
            log_level=self.log_level,
            threads=self.threads,
            initializer=self.initializer,
        )
        job.result_path.unlink(missing_ok=True)
        process = self.ctx.Process(
            target=run_job, args=(job, os.getpid()), name=f"virnucpro-worker-{slot.index}"
        )
        process.start()
        task.attempts += 1
        stats.tasks.append(task.name)
        self.running[slot.index] = _Running(process, task, job, time.time())
        self._write_pids()
        log.info(
            "worker %d (pid %d, %s): task %s attempt %d",
            slot.index,
            process.pid,
            slot.device,
            task.name,
            attempt,
        )
        if self.on_worker_start is not None:
            self.on_worker_start(
                WorkerEvent(slot.index, process.pid, task.name, attempt, slot.device, task.out_dir)
            )

    def _write_pids(self) -> None:
        atomic_write_text(
            self.out_root / "workers.json",
            json.dumps(
                {
                    str(k): {"pid": r.process.pid, "task": r.task.name, "device": r.job.cfg.device}
                    for k, r in self.running.items()
                },
                indent=1,
            ),
        )

    # -- results --

    def _finish(self, slot_index: int) -> None:
        run = self.running.pop(slot_index)
        run.process.join()
        self._write_pids()
        stats = self.stats[slot_index]
        stats.seconds += time.time() - run.started
        result: dict[str, Any] = {}
        if run.job.result_path.exists():
            result = json.loads(run.job.result_path.read_text(encoding="utf-8"))
        code = run.process.exitcode
        if code == 0 and result.get("status") == "ok":
            self._succeeded(stats, run, result)
            return
        if result.get("fatal"):
            raise _FatalWorkerError(stats.slot, run, result)
        if result.get("status") == "error":
            what = f"{result.get('error_type')}: {result.get('message')}"
        else:  # died without a word: a signal (OOM killer, SIGKILL), a segfault, os._exit
            what = (
                f"exit code {code}"
                + (f" (signal {-code})" if code is not None and code < 0 else "")
                + f"; log tail: {_log_tail(run.job.log_path)!r}"
            )
        self._failed(stats, run, what)

    def _succeeded(self, stats: _WorkerStats, run: _Running, result: dict[str, Any]) -> None:
        run.task.status = "done"
        run.task.record = result.get("record")
        stats.consecutive_failures = 0
        numbers = _record_stats(run.task.record)
        stats.sequences += int(numbers["sequences"])
        stats.tokens += int(numbers["tokens"])
        stats.embed_seconds += numbers["seconds"]
        # Embed-phase window: from the record when it has timestamps, else the tail of the process.
        end = numbers.get("embed_finished_at", result["finished_at"])
        start = numbers.get("embed_started_at", end - numbers["seconds"])
        stats.embed_start = start if stats.embed_start is None else min(stats.embed_start, start)
        stats.embed_end = end if stats.embed_end is None else max(stats.embed_end, end)
        self._save_manifest()

    def _failed(self, stats: _WorkerStats, run: _Running, what: str) -> None:
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.errors.append(f"{run.task.name}: {what}")
        log_path = run.job.log_path
        if stats.consecutive_failures <= self.max_retries:
            stats.retries += 1
            log.warning(
                "worker %d (%s) failed on %s (%s); retry %d/%d with resume; log: %s",
                stats.slot.index,
                stats.slot.device,
                run.task.name,
                what,
                stats.consecutive_failures,
                self.max_retries,
                log_path,
            )
            return  # task stays pending with this slot preferred
        stats.healthy = False
        log.error(
            "worker %d (%s) failed %d times in a row (last: %s); retiring it and redistributing "
            "the rest of %s; log: %s",
            stats.slot.index,
            stats.slot.device,
            stats.consecutive_failures,
            what,
            run.task.name,
            log_path,
        )
        healthy = self._healthy()
        if not healthy:
            raise WorkerFailedError(
                f"every worker failed; last: worker {stats.slot.index} ({stats.slot.device}) on "
                f"{run.task.name}: {what}; see the logs in {self.log_dir}, fix the cause and rerun "
                "with resume"
            )
        self._redistribute(run.task, healthy, stats.slot)

    def _redistribute(self, task: _Task, healthy: list[_Slot], dead: _Slot) -> None:
        """Keep the task's finished parts (as a complete ``<task>.kept`` directory) and split its
        remaining rows into one sub-shard per healthy slot."""
        import shutil

        kept_dir = self.redistributed_dir / f"{task.name}.kept"
        if kept_dir.exists():
            shutil.rmtree(kept_dir)  # left by a coordinator that died mid-salvage
        kept = salvage_parts(task.out_dir, kept_dir)
        subshards = write_remaining_subshards(
            task.shard_path, set(kept), len(healthy), self.redistributed_dir, task.name
        )
        task.status = "redistributed"
        if kept:
            self.tasks.append(
                _Task(
                    kept_dir.name, task.shard_path, kept_dir, preferred=None, status="kept", parent=task.name
                )
            )
        for path in subshards:
            self.tasks.append(
                _Task(path.stem, path, self.redistributed_dir / path.stem, preferred=None, parent=task.name)
            )
        # Other work queued for the retired slot goes to whichever healthy slot is free next.
        for t in self.tasks:
            if t.preferred == dead.index:
                t.preferred = None
        remaining = sum(len(shard_ids(p)) for p in subshards)
        self.redistributions.append(
            {
                "from_worker": dead.index,
                "device": dead.device,
                "task": task.name,
                "kept": len(kept),
                "remaining": remaining,
                "kept_dir": str(kept_dir) if kept else None,
                "sub_shards": [str(p) for p in subshards],
            }
        )
        log.warning(
            "redistributed %d remaining rows of %s into %d sub-shard(s); kept %d finished rows in %s",
            remaining,
            task.name,
            len(subshards),
            len(kept),
            kept_dir,
        )
        self._save_manifest()
        # The partial directory is superseded by the kept copy; removing it leaves only complete
        # shard directories under out_root for anyone who lists them.
        shutil.rmtree(task.out_dir, ignore_errors=True)

    # -- main loop --

    def run(self) -> dict[str, Any]:
        self.out_root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._plan()
        self._save_manifest()
        started = time.time()
        stop = _StopSignals()
        with stop.installed():
            try:
                self._loop(stop)
            except BaseException:
                self._stop_workers(stop)
                raise
        wall = time.time() - started
        return self._summary(wall)

    def _loop(self, stop: _StopSignals) -> None:
        while True:
            if stop.is_set():
                self._stop_workers(stop)
                raise Interrupted(
                    f"embedding under {self.out_root} was interrupted (signal {stop.first}); "
                    "the workers finished their current part; rerun with resume to continue"
                )
            for slot in self._healthy():
                if slot.index not in self.running:
                    task = self._next_task(slot)
                    if task is not None:
                        self._start(slot, task)
            if not self.running:
                if any(t.status == "pending" for t in self.tasks):
                    raise WorkerFailedError(
                        f"tasks are left but no healthy worker can take them; see {self.log_dir}"
                    )
                return
            sentinels = {r.process.sentinel: k for k, r in self.running.items()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=_POLL_S)
            if stop.is_set():
                continue  # workers may have died from the same signal: not a failure, stop above
            for sentinel in ready:
                self._finish(sentinels[sentinel])

    def _stop_workers(self, stop: _StopSignals) -> None:
        """SIGTERM every running worker (each finishes its current part), then wait for them.

        Workers still running after the grace period, or when a second signal arrives, are killed.
        """
        for run in self.running.values():
            if run.process.is_alive():
                run.process.terminate()
        deadline = time.time() + _TERMINATE_GRACE_S
        for run in self.running.values():
            while run.process.is_alive() and time.time() < deadline and stop.count < 2:
                run.process.join(_POLL_S)
            if run.process.is_alive():
                log.error(
                    "worker pid %d did not stop (grace %.0f s, signals %d); killing it",
                    run.process.pid,
                    _TERMINATE_GRACE_S,
                    stop.count,
                )
                run.process.kill()
            run.process.join()
        self.running.clear()
        with contextlib.suppress(OSError):
            self._write_pids()
            self._save_manifest()

    def _summary(self, wall: float) -> dict[str, Any]:
        output_tasks = [t for t in self.tasks if t.status in ("done", "kept")]
        output_dirs = [t.out_dir for t in output_tasks]
        input_ids: list[str] = []
        for p in self.shard_paths:
            input_ids.extend(shard_ids(p))
        if len(set(input_ids)) != len(input_ids):
            raise InputError(f"the input shards {self.shard_paths[:3]} repeat ids; ids must be unique")
        check = check_outputs(input_ids, output_dirs)
        workers = []
        for s in self.stats.values():
            workers.append(
                {
                    "worker": s.slot.index,
                    "device": s.slot.device,
                    "gpu": s.slot.gpu,
                    "healthy": s.healthy,
                    "tasks": s.tasks,
                    "seconds": round(s.seconds, 3),
                    "embed_seconds": round(s.embed_seconds, 3),
                    "embed_started_at": s.embed_start,
                    "embed_finished_at": s.embed_end,
                    "sequences": s.sequences,
                    "tokens": s.tokens,
                    "tokens_per_s": round(s.tokens / s.embed_seconds, 1) if s.embed_seconds > 0 else None,
                    "failures": s.failures,
                    "retries": s.retries,
                    "errors": s.errors,
                }
            )
        starts = [w["embed_started_at"] for w in workers if w["embed_started_at"] is not None]
        ends = [w["embed_finished_at"] for w in workers if w["embed_finished_at"] is not None]
        tokens = sum(w["tokens"] for w in workers)
        window = (max(ends) - min(starts)) if starts and ends else None
        return {
            "schema": SUMMARY_SCHEMA,
            "kind": self.kind,
            "column": self.column,
            "model": self.cfg.encoder.model,
            "config": asdict(self.cfg),
            "devices": [s.device for s in self.slots],
            "n_workers": len(self.slots),
            "sequences": check["ids"],
            "tokens": tokens,
            "wall_seconds": round(wall, 3),
            "embed_window_seconds": round(window, 3) if window is not None else None,
            "tokens_per_s": round(tokens / window, 1) if window else None,
            "retries": sum(s.retries for s in self.stats.values()),
            "failures": sum(s.failures for s in self.stats.values()),
            "redistributions": self.redistributions,
            "workers": workers,
            "output_dirs": [str(d) for d in output_dirs],
            "records": [t.record for t in output_tasks if t.record is not None],
            "logs": str(self.log_dir),
        }


class _FatalWorkerError(Exception):
    """Internal: carries a worker's non-retryable error out of the loop (re-raised as its own type)."""

    def __init__(self, slot: _Slot, run: _Running, result: dict[str, Any]) -> None:
        super().__init__(result.get("message"))
        self.slot, self.run, self.result = slot, run, result


def _reraise_fatal(exc: _FatalWorkerError) -> VirNucProError:
    by_name = {cls.__name__: cls for cls in FATAL_ERRORS}
    cls = by_name.get(str(exc.result.get("error_type")), WorkerFailedError)
    return cls(
        f"worker {exc.slot.index} ({exc.slot.device}) on {exc.run.task.name}: "
        f"{exc.result.get('message')} (log: {exc.run.job.log_path})"
    )


def embed_all(
    shard_paths: Sequence[str | os.PathLike[str]],
    column: str | None,
    kind: str,
    cfg: EmbedConfig,
    gpus: Sequence[int] | None,
    out_root: str | os.PathLike[str],
    *,
    max_retries: int = 2,
    n_workers: int | None = None,
    on_worker_start: Callable[[WorkerEvent], None] | None = None,
    initializer: Callable[[int, int], None] | None = None,
    cpu_threads: int | None = None,
) -> dict[str, Any]:
    """Embed every shard with one worker process per device; check and summarise the outputs.

    Args:
        shard_paths: shard parquet files (columns ``id, nucleotide, protein``); shard k starts on
            worker ``k % n_workers``; output goes to ``out_root/<shard stem>/``.
        column: shard column to embed, or None for the kind's column (esm2: protein,
            dnabert-s: nucleotide).
        kind: ``esm2`` or ``dnabert-s``.
        cfg: embed config; ``device`` is replaced per worker, ``resume`` continues a previous run
            (including its redistributed sub-shards, from ``out_root/coordinator.json``).
        gpus: CUDA device indices (as torch numbers them; physical when ``CUDA_VISIBLE_DEVICES`` is
            unset), one worker process each. Empty or None: ``n_workers`` CPU worker processes.
        out_root: output root; also holds ``logs/worker-<k>.log``, ``workers.json`` (live worker
            pids), ``coordinator.json`` (the task manifest) and ``redistributed/``.
        max_retries: consecutive failures a worker may have before it is retired and its remaining
            rows are redistributed to the healthy workers.
        n_workers: CPU worker processes when ``gpus`` is empty (default 1).
        on_worker_start: called in this process with a `WorkerEvent` each time a worker starts.
        initializer: picklable ``f(worker, attempt)`` run inside each worker before it embeds.
        cpu_threads: torch threads per CPU worker (default: CPU count / workers); ignored on GPUs.

    Returns:
        A summary (JSON-serialisable): ``schema``, ``sequences``, ``tokens``, ``wall_seconds``
        (end to end), ``embed_window_seconds`` (first batch start to last batch end over all
        workers), ``tokens_per_s``, ``retries``, ``failures``, ``redistributions``, ``workers``
        (per worker: seconds, embed_seconds, tokens, retries, ...), ``output_dirs`` (pass these to
        `pipeline.embed.parts.open_embeddings`), ``records`` (the shards' run records), ``logs``.

    Raises:
        OutputIntegrityError: an input id is missing from the outputs, or is there twice.
        WorkerFailedError: every worker was retired.
        Interrupted: SIGTERM arrived; rerun with ``resume`` to continue.
        ConfigError, InputError, ModelLoadError, ...: a worker hit an error no retry can fix.
    """
    if not shard_paths:
        raise ConfigError("no shards to embed; give at least one shard parquet")
    if max_retries < 0:
        raise ConfigError(f"max_retries={max_retries} must be >= 0")
    column = column or column_for_kind(kind)
    slots = _make_slots(gpus, n_workers, cfg)
    if cpu_threads is None and not gpus:
        cpu_threads = max(1, (os.cpu_count() or 1) // len(slots))
    coordinator = _Coordinator(
        [Path(p) for p in shard_paths],
        column,
        kind,
        cfg,
        slots,
        Path(out_root),
        max_retries,
        on_worker_start,
        initializer,
        None if gpus else cpu_threads,
    )
    try:
        return coordinator.run()
    except _FatalWorkerError as exc:
        raise _reraise_fatal(exc) from None
