"""The multi-GPU scheduler: which task runs on which slot next, what a failure leads to.

Pure bookkeeping, no processes and no files (the executor runs processes, the coordinator moves
files), so every decision is tested directly:

- tasks are handed to idle healthy slots, a slot's own task (``preferred``) first, then any task
  whose slot is gone, biggest (most tokens) first;
- a failure is retried on the same slot until a slot has failed ``max_retries`` times in a row;
  then the slot is retired and its task's remaining work is redistributed over the healthy slots
  (the coordinator writes the sub-shards; `Scheduler.redistributed` records them);
- `token_balanced_split` splits rows into groups of equal token sums (for shards and sub-shards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError, WorkerFailedError


@dataclass(frozen=True)
class Slot:
    """One worker place: a GPU (``gpu`` set) or a CPU worker process for tests."""

    index: int
    device: str
    gpu: int | None


def make_slots(gpus: Sequence[int] | None, n_workers: int | None, cpu_device: str = "cpu") -> list[Slot]:
    """One slot per GPU index, else ``n_workers`` CPU slots (default 1)."""
    if gpus:
        if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
            raise ConfigError(f"gpus={list(gpus)} must be distinct non-negative GPU indices, e.g. 0,1")
        return [Slot(k, f"cuda:{g}", g) for k, g in enumerate(gpus)]
    n = 1 if n_workers is None else n_workers
    if n < 1:
        raise ConfigError(f"n_workers={n} must be >= 1 CPU worker processes")
    device = cpu_device if not cpu_device.startswith("cuda") else "cpu"
    return [Slot(k, device, None) for k in range(n)]


class TaskStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    KEPT = "kept"  # finished parts salvaged from a retired slot's task
    REDISTRIBUTED = "redistributed"  # superseded by its kept part and sub-shards


@dataclass
class Task:
    """One unit of work: a shard (or sub-shard) into one output directory."""

    name: str
    shard_path: Path
    out_dir: Path
    preferred: int | None = None  # slot it should run on (None: any healthy slot)
    status: TaskStatus = TaskStatus.PENDING
    parent: str | None = None
    attempts: int = 0  # runs started, all slots
    tokens: int = 0  # size hint for ordering (0: unknown)
    result: Any = None  # the worker's result record once done

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shard_path": str(self.shard_path),
            "out_dir": str(self.out_dir),
            "preferred": self.preferred,
            "status": self.status.value,
            "parent": self.parent,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], alive: set[int]) -> Task:
        preferred = data.get("preferred")
        return cls(
            data["name"],
            Path(data["shard_path"]),
            Path(data["out_dir"]),
            preferred if preferred in alive else None,
            TaskStatus(data["status"]),
            data.get("parent"),
        )


@dataclass
class SlotStats:
    """What a slot did (the coordinator's summary lists these)."""

    slot: Slot
    healthy: bool = True
    consecutive_failures: int = 0
    failures: int = 0
    retries: int = 0
    tasks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Outcome(StrEnum):
    RETRY = "retry"  # the task stays pending on the same slot
    REDISTRIBUTE = "redistribute"  # the slot is retired; split the task's remaining work


class Scheduler:
    """Slots, tasks and the retry / retire / redistribute decisions.

    Args:
        slots: the worker slots.
        tasks: initial tasks (from shards, or from a resumed manifest).
        max_retries: consecutive failures a slot may have before it is retired.
    """

    def __init__(self, slots: Sequence[Slot], tasks: Sequence[Task], max_retries: int) -> None:
        if max_retries < 0:
            raise ConfigError(f"max_retries={max_retries} must be >= 0")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be distinct: {names}")
        self.slots = list(slots)
        self.tasks = list(tasks)
        self.max_retries = max_retries
        self.stats = {s.index: SlotStats(s) for s in self.slots}
        self.running: dict[int, Task] = {}

    # -- queries --

    def healthy(self) -> list[Slot]:
        return [s for s in self.slots if self.stats[s.index].healthy]

    def pending(self) -> list[Task]:
        return [t for t in self.tasks if t.status == TaskStatus.PENDING]

    def outputs(self) -> list[Task]:
        """Tasks whose output directories together hold the run's result."""
        return [t for t in self.tasks if t.status in (TaskStatus.DONE, TaskStatus.KEPT)]

    def finished(self) -> bool:
        return not self.running and not self.pending()

    def next_task(self, slot: Slot) -> Task | None:
        """The task ``slot`` should run next: its own first, then orphaned ones, biggest first."""
        busy = {id(t) for t in self.running.values()}
        pending = [t for t in self.pending() if id(t) not in busy]
        own = [t for t in pending if t.preferred == slot.index]
        if own:
            return own[0]
        orphans = [t for t in pending if t.preferred is None or not self.stats[t.preferred].healthy]
        return max(orphans, key=lambda t: t.tokens, default=None) if orphans else None

    def assignments(self) -> list[tuple[Slot, Task]]:
        """Start-now pairs for every idle healthy slot that has work (marks them running)."""
        out = []
        for slot in self.healthy():
            if slot.index in self.running:
                continue
            task = self.next_task(slot)
            if task is not None:
                self.running[slot.index] = task
                task.attempts += 1
                self.stats[slot.index].tasks.append(task.name)
                out.append((slot, task))
        return out

    # -- events --

    def succeeded(self, slot_index: int, result: Any = None) -> Task:
        task = self.running.pop(slot_index)
        task.status = TaskStatus.DONE
        task.result = result
        self.stats[slot_index].consecutive_failures = 0
        return task

    def failed(self, slot_index: int, what: str) -> tuple[Task, Outcome]:
        """Record a failure; RETRY keeps the task pending, REDISTRIBUTE retires the slot.

        Raises `WorkerFailedError` when the retired slot was the last healthy one.
        """
        task = self.running.pop(slot_index)
        stats = self.stats[slot_index]
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.errors.append(f"{task.name}: {what}")
        if stats.consecutive_failures <= self.max_retries:
            stats.retries += 1
            return task, Outcome.RETRY
        stats.healthy = False
        if not self.healthy():
            raise WorkerFailedError(
                f"every worker failed; last: worker {slot_index} ({stats.slot.device}) on {task.name}: "
                f"{what}; see the worker logs, fix the cause and rerun with resume"
            )
        return task, Outcome.REDISTRIBUTE

    def stopped(self, slot_index: int) -> None:
        """A task ended without a verdict (the run is stopping): it stays pending."""
        self.running.pop(slot_index, None)

    def redistributed(self, task: Task, dead: int, kept: Task | None, subtasks: Sequence[Task]) -> None:
        """Replace ``task`` by its salvaged part (``kept``) and its sub-shards; work queued for the
        retired slot goes to whichever healthy slot is free next."""
        task.status = TaskStatus.REDISTRIBUTED
        if kept is not None:
            kept.status = TaskStatus.KEPT
            self.tasks.append(kept)
        self.tasks.extend(subtasks)
        for t in self.tasks:
            if t.preferred == dead:
                t.preferred = None


def token_balanced_split(tokens: Sequence[int] | np.ndarray, n: int) -> list[np.ndarray]:
    """Split rows into ``n`` groups with (nearly) equal token sums.

    Longest-processing-time first: rows are visited longest first and each goes to the group with
    the fewest tokens so far (ties: the lowest group). The largest difference between two groups is
    at most the longest row. Returns ``n`` arrays of row indices, each in ascending row order.
    """
    import heapq

    if n < 1:
        raise ConfigError(f"n={n} groups must be >= 1")
    arr = np.asarray(tokens, dtype=np.int64)
    order = np.argsort(-arr, kind="stable")
    heap = [(0, k) for k in range(n)]
    groups: list[list[int]] = [[] for _ in range(n)]
    for row in order.tolist():
        total, k = heapq.heappop(heap)
        groups[k].append(row)
        heapq.heappush(heap, (total + int(arr[row]), k))
    return [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]


__all__ = [
    "Outcome",
    "Scheduler",
    "Slot",
    "SlotStats",
    "Task",
    "TaskStatus",
    "make_slots",
    "token_balanced_split",
]
