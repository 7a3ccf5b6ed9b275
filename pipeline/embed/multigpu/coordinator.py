"""Multi-device runs: one worker process per device slot, retries, redistribution, output checks.

The coordinator wires three parts together, the way inference engines split it:
`pipeline.embed.multigpu.scheduler` decides (which task on which slot, retry or retire),
`pipeline.embed.multigpu.executor` runs processes (spawn, wait, stop; the signal handling) and
`pipeline.embed.multigpu.worker` does the work in each process and reports a typed `WorkerResult`.
What a task does is its `Work`: `FrameWork` (DNABERT-S -> ESM-2 -> classifier head, the production
path, `score_all`) or `EmbedWork` (one model, `embed_all`). Shard k starts on slot ``k % n_slots``.

Failure handling:
- A worker that dies (Python exception, CUDA OOM, segfault, SIGKILL) is detected from its exit code
  and result file, and the task is rerun on the same slot with resume, so the parts it finished
  are kept.
- A slot that fails more than ``max_retries`` times in a row is retired. The rows of its task that
  are not in a valid part yet are written to sub-shards under ``out_root/redistributed/`` (split
  by stride over the length-sorted rows, one per healthy slot) and run by the healthy slots; the
  finished parts are kept as a
  complete ``<task>.kept`` directory.
- Errors that no retry can fix (bad config, input, checkpoint; see `worker.FATAL_ERRORS`) stop the
  run at once and are re-raised.
- SIGTERM/SIGINT to the coordinator is forwarded to the workers (each finishes the parts it has
  issued); then `Interrupted` is raised. Rerunning with resume continues from the manifest
  ``out_root/coordinator.json``, redistributed sub-shards included.

While it runs, the workers' progress files (``out_root/progress/``) feed one progress display.
At the end every input id must be in exactly one output directory, else `OutputIntegrityError`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
from pipeline.embed.multigpu.executor import ProcessExecutor, StopSignals, log_tail
from pipeline.embed.multigpu.scheduler import Outcome, Scheduler, Slot, Task, TaskStatus, make_slots
from pipeline.embed.multigpu.worker import FATAL_ERRORS, EmbedWork, FrameWork, WorkerJob, WorkerResult
from pipeline.embed.parts import WORKER_LOG_DIR

log = logging.getLogger(__name__)

MANIFEST_NAME = "coordinator.json"
MANIFEST_SCHEMA = "virnucpro.coordinator/1"
SUMMARY_SCHEMA = "virnucpro.embed_all/1"
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


# ----------------------------------------------------------------------------------------------
# the coordinator


@dataclass
class _SlotTimes:
    seconds: float = 0.0  # process wall time, start to exit (load included)
    embed_seconds: float = 0.0  # work-phase seconds reported by the worker
    sequences: int = 0
    tokens: int = 0
    embed_start: float | None = None
    embed_end: float | None = None
    busy: list[tuple[float, float]] | None = None  # (busy fraction, window) per task


def _record_numbers(record: dict[str, Any] | None) -> dict[str, Any]:
    """Sequences, tokens, work seconds, epoch window and busy fraction of a worker's record.

    Handles both record kinds: an embed run record (``stages[...]``) and a frame `ShardResult`.
    """
    out: dict[str, Any] = {"sequences": 0, "tokens": 0, "seconds": 0.0}
    if not record:
        return out
    if "models" in record and "frames" in record:  # a frame ShardResult
        out["sequences"] = int(record.get("frames_scored") or 0)
        out["tokens"] = int(sum(int(m.get("tokens") or 0) for m in (record.get("models") or {}).values()))
        start, end = record.get("started_at"), record.get("finished_at")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            out.update(seconds=end - start, start=start, end=end)
        out["busy_fraction"] = record.get("busy_fraction")
        out["window_s"] = record.get("window_s")
        return out
    for s in [s for s in record.get("stages", []) if s.get("stage") == "embed"]:
        out["sequences"] += int(s.get("sequences") or 0)
        out["tokens"] += int(s.get("tokens") or 0)
        start, end = s.get("embed_started_at"), s.get("embed_finished_at")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            out["seconds"] += end - start
            out["start"] = min(out.get("start", start), start)
            out["end"] = max(out.get("end", end), end)
        else:
            out["seconds"] += float((s.get("timings") or {}).get("embed_s") or s.get("seconds") or 0)
        out["busy_fraction"] = (
            None if s.get("device_idle_fraction") is None else 1 - s["device_idle_fraction"]
        )
    return out


class _FatalWorkerError(Exception):
    """Internal: carries a worker's non-retryable error out of the loop (re-raised as its own type)."""

    def __init__(self, slot: Slot, job: WorkerJob, result: WorkerResult) -> None:
        super().__init__(result.message)
        self.slot, self.job, self.result = slot, job, result

    def reraise(self) -> VirNucProError:
        by_name = {cls.__name__: cls for cls in FATAL_ERRORS}
        cls = by_name.get(str(self.result.error_type), WorkerFailedError)
        return cls(
            f"worker {self.slot.index} ({self.slot.device}) on {self.job.task}: "
            f"{self.result.message} (log: {self.job.log_path})"
        )


class _Coordinator:
    def __init__(
        self,
        shard_paths: Sequence[Path],
        work: Any,
        identity: dict[str, Any],
        slots: list[Slot],
        out_root: Path,
        max_retries: int,
        resume: bool,
        on_worker_start: Callable[[WorkerEvent], None] | None,
        initializer: Callable[[int, int], None] | None,
        threads: int | None,
        progress: Any = None,
        compile_cache_dir: Path | None = None,
    ) -> None:
        self.shard_paths = [Path(p).resolve() for p in shard_paths]
        self.work = work
        self.identity = identity  # what a resumed manifest must match (kind, model)
        self.slots = slots
        self.out_root = out_root
        self.max_retries = max_retries
        self.resume = resume
        self.on_worker_start = on_worker_start
        self.initializer = initializer
        self.threads = threads
        self.progress = progress
        self.compile_cache_dir = compile_cache_dir
        self.log_dir = out_root / WORKER_LOG_DIR
        self.progress_dir = self.log_dir / "progress"
        self.redistributed_dir = out_root / "redistributed"
        self.times = {s.index: _SlotTimes() for s in slots}
        self.redistributions: list[dict[str, Any]] = []
        # Worker logs are files: keep them at INFO at least, DEBUG when this process is at DEBUG.
        self.log_level = logging.getLevelName(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
        self.executor = ProcessExecutor(out_root / "workers.json")
        self.scheduler = Scheduler(slots, self._plan(), max_retries)

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
                    **self.identity,
                    "shards": [str(p) for p in self.shard_paths],
                    "tasks": [t.to_json() for t in self.scheduler.tasks],
                },
                indent=1,
            ),
        )

    def _plan(self) -> list[Task]:
        n = len(self.slots)
        fresh = [
            Task(p.stem, p, self.out_root / p.stem, preferred=k % n) for k, p in enumerate(self.shard_paths)
        ]
        if len({t.name for t in fresh}) != len(fresh):
            raise ConfigError(f"shard file names must be distinct: {[str(p) for p in self.shard_paths]}")
        if not self.manifest_path.exists():
            return fresh
        old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        if not self.resume:
            raise ConfigError(
                f"{self.out_root} already holds an embedding run ({self.manifest_path}); "
                "rerun with resume to continue it, or choose an empty output directory"
            )
        keys = sorted(self.identity)
        mine = (*(self.identity.get(k) for k in keys), [str(p) for p in self.shard_paths])
        theirs = (*(old.get(k) for k in keys), old.get("shards"))
        if mine != theirs:
            then = ", ".join(f"{k}={old.get(k)!r}" for k in keys)
            now = ", ".join(f"{k}={self.identity[k]!r}" for k in keys)
            raise ResumeMismatchError(
                f"{self.manifest_path} was made for {then} over {len(old.get('shards', []))} shards, not "
                f"{now} over {len(self.shard_paths)}; use a new output directory for another model or input"
            )
        alive = {s.index for s in self.slots}
        tasks = []
        for data in old["tasks"]:
            task = Task.from_json(data, alive)
            if task.status == TaskStatus.DONE and not _complete(task.out_dir):
                task.status = TaskStatus.PENDING
            tasks.append(task)
        return tasks

    # -- starting and finishing workers --

    def _start(self, slot: Slot, task: Task) -> None:
        attempt = task.attempts - 1
        job = WorkerJob(
            worker=slot.index,
            attempt=attempt,
            task=task.name,
            shard_path=task.shard_path,
            out_dir=task.out_dir,
            work=self.work,
            device=slot.device,
            gpu=slot.gpu,
            # A retry (or a rerun over an existing directory) must keep the parts already written.
            resume=self.resume or attempt > 0,
            log_path=self.log_dir / f"worker-{slot.index}.log",
            result_path=self.log_dir / f"worker-{slot.index}.{task.name}.attempt-{attempt}.json",
            progress_path=self.progress_dir / f"{task.name}.json",
            log_level=self.log_level,
            threads=self.threads,
            initializer=self.initializer,
            compile_cache_dir=self.compile_cache_dir,
        )
        run = self.executor.start(slot.index, job)
        log.info(
            "worker %d (pid %d, %s): task %s attempt %d",
            slot.index,
            run.process.pid,
            slot.device,
            task.name,
            attempt,
        )
        if self.on_worker_start is not None:
            self.on_worker_start(
                WorkerEvent(slot.index, run.process.pid, task.name, attempt, slot.device, task.out_dir)
            )

    def _finish(self, slot_index: int) -> None:
        run, result = self.executor.collect(slot_index)
        times = self.times[slot_index]
        times.seconds += time.time() - run.started
        slot = self.scheduler.stats[slot_index].slot
        if result.ok:
            self.scheduler.succeeded(slot_index, result.record)
            self._add_times(times, result)
            self._save_manifest()
            return
        if result.fatal:
            raise _FatalWorkerError(slot, run.job, result)
        if result.status == "error":
            what = f"{result.error_type}: {result.message}"
        else:  # died without a word: a signal (OOM killer, SIGKILL), a segfault, os._exit
            code = result.exit_code
            what = (
                f"exit code {code}"
                + (f" (signal {-code})" if code is not None and code < 0 else "")
                + f"; log tail: {log_tail(run.job.log_path)!r}"
            )
        task, outcome = self.scheduler.failed(slot_index, what)
        stats = self.scheduler.stats[slot_index]
        if outcome == Outcome.RETRY:
            log.warning(
                "worker %d (%s) failed on %s (%s); retry %d/%d with resume; log: %s",
                slot_index,
                slot.device,
                task.name,
                what,
                stats.consecutive_failures,
                self.max_retries,
                run.job.log_path,
            )
            return
        log.error(
            "worker %d (%s) failed %d times in a row (last: %s); retiring it and redistributing the rest "
            "of %s; log: %s",
            slot_index,
            slot.device,
            stats.consecutive_failures,
            what,
            task.name,
            run.job.log_path,
        )
        self._redistribute(task, slot)

    @staticmethod
    def _add_times(times: _SlotTimes, result: WorkerResult) -> None:
        numbers = _record_numbers(result.record)
        times.sequences += int(numbers["sequences"])
        times.tokens += int(numbers["tokens"])
        times.embed_seconds += float(numbers["seconds"])
        # work window: from the record when it has timestamps, else the tail of the process
        end = numbers.get("end", result.finished_at or time.time())
        start = numbers.get("start", end - numbers["seconds"])
        times.embed_start = start if times.embed_start is None else min(times.embed_start, start)
        times.embed_end = end if times.embed_end is None else max(times.embed_end, end)
        if numbers.get("busy_fraction") is not None:
            times.busy = (times.busy or []) + [
                (float(numbers["busy_fraction"]), float(numbers.get("window_s") or numbers["seconds"] or 0.0))
            ]

    def _redistribute(self, task: Task, dead: Slot) -> None:
        """Keep the task's finished parts (as a complete ``<task>.kept`` directory) and split its
        remaining rows into one sub-shard per healthy slot."""
        import shutil

        healthy = self.scheduler.healthy()
        kept_dir = self.redistributed_dir / f"{task.name}.kept"
        if kept_dir.exists():
            shutil.rmtree(kept_dir)  # left by a coordinator that died mid-salvage
        kept = salvage_parts(task.out_dir, kept_dir)
        subshards = write_remaining_subshards(
            task.shard_path, set(kept), len(healthy), self.redistributed_dir, task.name
        )
        kept_task = Task(kept_dir.name, task.shard_path, kept_dir, parent=task.name) if kept else None
        subtasks = [Task(p.stem, p, self.redistributed_dir / p.stem, parent=task.name) for p in subshards]
        self.scheduler.redistributed(task, dead.index, kept_task, subtasks)
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
        self.progress_dir.mkdir(parents=True, exist_ok=True)
        self._save_manifest()
        started = time.time()
        stop = StopSignals()
        with stop.installed():
            try:
                self._loop(stop)
            except BaseException:
                self.executor.stop_all(stop)
                self._save_manifest_quietly()
                raise
            finally:
                self._poll_progress()
        return self._summary(time.time() - started)

    def _save_manifest_quietly(self) -> None:
        try:
            self._save_manifest()
        except OSError:
            pass

    def _poll_progress(self) -> None:
        if self.progress is not None:
            from pipeline.embed.progress import read_progress_dir

            self.progress.update_many(read_progress_dir(self.progress_dir))

    def _loop(self, stop: StopSignals) -> None:
        while True:
            if stop.is_set():
                self.executor.stop_all(stop)
                for slot in list(self.scheduler.running):
                    self.scheduler.stopped(slot)
                self._save_manifest_quietly()
                raise Interrupted(
                    f"the run under {self.out_root} was interrupted (signal {stop.first}); "
                    "the workers finished the parts they had started; rerun with resume to continue"
                )
            for slot, task in self.scheduler.assignments():
                self._start(slot, task)
            if not self.executor.running:
                if self.scheduler.pending():
                    raise WorkerFailedError(
                        f"tasks are left but no healthy worker can take them; see {self.log_dir}"
                    )
                return
            ended = self.executor.wait()
            self._poll_progress()
            if stop.is_set():
                continue  # workers may have died from the same signal: not a failure, stop above
            for slot_index in ended:
                self._finish(slot_index)

    def _summary(self, wall: float) -> dict[str, Any]:
        outputs = self.scheduler.outputs()
        output_dirs = [t.out_dir for t in outputs]
        input_ids: list[str] = []
        for p in self.shard_paths:
            input_ids.extend(shard_ids(p))
        if len(set(input_ids)) != len(input_ids):
            raise InputError(f"the input shards {self.shard_paths[:3]} repeat ids; ids must be unique")
        check = check_outputs(input_ids, output_dirs)
        workers = []
        for s in self.scheduler.stats.values():
            t = self.times[s.slot.index]
            busy = None
            if t.busy:
                weight = sum(w for _, w in t.busy)
                busy = (sum(b * w for b, w in t.busy) / weight) if weight > 0 else t.busy[-1][0]
            workers.append(
                {
                    "worker": s.slot.index,
                    "device": s.slot.device,
                    "gpu": s.slot.gpu,
                    "healthy": s.healthy,
                    "tasks": s.tasks,
                    "seconds": round(t.seconds, 3),
                    "embed_seconds": round(t.embed_seconds, 3),
                    "embed_started_at": t.embed_start,
                    "embed_finished_at": t.embed_end,
                    "sequences": t.sequences,
                    "tokens": t.tokens,
                    "tokens_per_s": round(t.tokens / t.embed_seconds, 1) if t.embed_seconds > 0 else None,
                    "gpu_busy_fraction": None if busy is None else round(busy, 5),
                    "failures": s.failures,
                    "retries": s.retries,
                    "errors": s.errors,
                }
            )
        starts = [w["embed_started_at"] for w in workers if w["embed_started_at"] is not None]
        ends = [w["embed_finished_at"] for w in workers if w["embed_finished_at"] is not None]
        tokens = sum(w["tokens"] for w in workers)
        window = (max(ends) - min(starts)) if starts and ends else None
        spread = (max(ends) - min(ends)) if len(ends) > 1 else (0.0 if ends else None)
        return {
            "schema": SUMMARY_SCHEMA,
            **self.identity,
            "config": _jsonable(self.work),
            "devices": [s.device for s in self.slots],
            "n_workers": len(self.slots),
            "sequences": check["ids"],
            "tokens": tokens,
            "wall_seconds": round(wall, 3),
            "embed_window_seconds": round(window, 3) if window is not None else None,
            "finish_spread_seconds": round(spread, 3) if spread is not None else None,
            "tokens_per_s": round(tokens / window, 1) if window else None,
            "retries": sum(s.retries for s in self.scheduler.stats.values()),
            "failures": sum(s.failures for s in self.scheduler.stats.values()),
            "redistributions": self.redistributions,
            "workers": workers,
            "output_dirs": [str(d) for d in output_dirs],
            "records": [t.result for t in outputs if t.result is not None],
            "logs": str(self.log_dir),
        }


def _complete(out_dir: Path) -> bool:
    from pipeline.embed.parts import read_metadata

    try:
        meta = read_metadata(out_dir) if out_dir.is_dir() else None
    except OutputIntegrityError:
        return False
    return bool(meta and meta.get("complete"))


def _jsonable(work: Any) -> Any:
    cfg = getattr(work, "cfg", None) or getattr(work, "job", None)
    try:
        return json.loads(json.dumps(asdict(cfg), default=str))
    except TypeError:
        return str(cfg)


def run_tasks(
    shard_paths: Sequence[str | os.PathLike[str]],
    work: Any,
    identity: dict[str, Any],
    gpus: Sequence[int] | None,
    out_root: str | os.PathLike[str],
    *,
    resume: bool = False,
    max_retries: int = 2,
    n_workers: int | None = None,
    cpu_device: str = "cpu",
    on_worker_start: Callable[[WorkerEvent], None] | None = None,
    initializer: Callable[[int, int], None] | None = None,
    cpu_threads: int | None = None,
    progress: Any = None,
    compile_cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Run ``work`` over every shard with one worker process per device; check and summarise.

    ``identity`` (e.g. ``{"kind": ..., "model": ...}``) is stored in the manifest and must match
    when resuming. See `embed_all` and `score_all` for the arguments and the summary.
    """
    if not shard_paths:
        raise ConfigError("no shards to run; give at least one shard parquet")
    if max_retries < 0:
        raise ConfigError(f"max_retries={max_retries} must be >= 0")
    slots = make_slots(gpus, n_workers, cpu_device)
    if cpu_threads is None and not gpus:
        cpu_threads = max(1, (os.cpu_count() or 1) // len(slots))
    coordinator = _Coordinator(
        [Path(p) for p in shard_paths],
        work,
        identity,
        slots,
        Path(out_root),
        max_retries,
        resume,
        on_worker_start,
        initializer,
        None if gpus else cpu_threads,
        progress,
        compile_cache_dir,
    )
    try:
        return coordinator.run()
    except _FatalWorkerError as exc:
        raise exc.reraise() from None


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
    progress: Any = None,
    compile_cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Embed every shard with one model, one worker process per device; check and summarise.

    Args:
        shard_paths: shard parquet files (columns ``id, nucleotide, protein``); shard k starts on
            worker ``k % n_workers``; output goes to ``out_root/<shard stem>/``.
        column: shard column to embed, or None for the kind's column.
        kind: a model kind of `pipeline.models.registry`.
        cfg: embed config; ``device`` is replaced per worker, ``resume`` continues a previous run
            (including its redistributed sub-shards, from ``out_root/coordinator.json``).
        gpus: CUDA device indices (as torch numbers them), one worker process each. Empty or
            None: ``n_workers`` CPU worker processes.
        out_root: output root; also holds ``logs/worker-<k>.log``, ``workers.json`` (live worker
            pids), ``coordinator.json`` (the task manifest), ``progress/`` and ``redistributed/``.
        max_retries: consecutive failures a worker may have before it is retired and its remaining
            rows are redistributed to the healthy workers.
        n_workers: CPU worker processes when ``gpus`` is empty (default 1).
        on_worker_start: called in this process with a `WorkerEvent` each time a worker starts.
        initializer: picklable ``f(worker, attempt)`` run inside each worker before it embeds.
        cpu_threads: torch threads per CPU worker (default: CPU count / workers); ignored on GPUs.
        progress: a `pipeline.embed.progress.RunProgress` to feed (None: no display).
        compile_cache_dir: on-disk compile cache shared by the workers (`Settings.compile_cache_dir`).

    Returns:
        A summary (JSON-serialisable): ``schema``, ``sequences``, ``tokens``, ``wall_seconds``,
        ``embed_window_seconds`` (first batch to last part over all workers),
        ``finish_spread_seconds`` (last worker's end minus the first's), ``tokens_per_s``,
        ``retries``, ``failures``, ``redistributions``, ``workers`` (per worker: seconds,
        embed_seconds, tokens, gpu_busy_fraction, retries, ...), ``output_dirs``, ``records``, ``logs``.

    Raises:
        OutputIntegrityError: an input id is missing from the outputs, or is there twice.
        WorkerFailedError: every worker was retired.
        Interrupted: SIGTERM/SIGINT arrived; rerun with ``resume`` to continue.
        ConfigError, InputError, ModelLoadError, ...: a worker hit an error no retry can fix.
    """
    column = column or column_for_kind(kind)
    return run_tasks(
        shard_paths,
        EmbedWork(column, kind, cfg),
        {"kind": kind, "column": column, "model": cfg.encoder.model},
        gpus,
        out_root,
        resume=cfg.resume,
        max_retries=max_retries,
        n_workers=n_workers,
        cpu_device=cfg.device,
        on_worker_start=on_worker_start,
        initializer=initializer,
        cpu_threads=cpu_threads,
        progress=progress,
        compile_cache_dir=compile_cache_dir,
    )


def score_all(
    shard_paths: Sequence[str | os.PathLike[str]],
    job: Any,
    gpus: Sequence[int] | None,
    out_root: str | os.PathLike[str],
    *,
    max_retries: int = 2,
    n_workers: int | None = None,
    on_worker_start: Callable[[WorkerEvent], None] | None = None,
    initializer: Callable[[int, int], None] | None = None,
    cpu_threads: int | None = None,
    progress: Any = None,
    compile_cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Score every shard's frames (DNABERT-S -> ESM-2 -> head) with one resident worker per device.

    ``job`` is a `pipeline.embed.frames.FrameJob` (its ``device`` is replaced per worker). Score
    parts go to ``out_root/<shard stem>/``; the rest is as in `embed_all`, whose summary this returns
    (``records`` are the shards' `ShardResult` dicts).
    """
    identity = {
        "kind": "frames",
        "model": f"{getattr(job.head, 'name', job.head)}|{job.dnabert.model}|{job.esm.model}",
    }
    return run_tasks(
        shard_paths,
        FrameWork(job),
        identity,
        gpus,
        out_root,
        resume=job.resume,
        max_retries=max_retries,
        n_workers=n_workers,
        on_worker_start=on_worker_start,
        initializer=initializer,
        cpu_threads=cpu_threads,
        progress=progress,
        compile_cache_dir=compile_cache_dir,
    )


__all__ = [
    "WorkerEvent",
    "check_outputs",
    "embed_all",
    "output_ids",
    "run_tasks",
    "salvage_parts",
    "score_all",
    "shard_ids",
    "valid_parts",
    "write_remaining_subshards",
]
