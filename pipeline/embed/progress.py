"""One progress display for a whole run, fed by every worker.

Each worker (a process per GPU, or the in-process CPU run) reports cumulative counts for its task
with `ProgressFile.write` (a small JSON file written atomically under ``<root>/progress/``; files
need no locks or semaphores shared between processes). The coordinator polls those files and
feeds `RunProgress`, which draws one tqdm bar on a terminal (frames done of the total, tokens/s,
ETA) and, off a terminal, logs one line every ``log_every_s`` seconds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskProgress:
    """Cumulative counts of one task (one shard on one worker).

    Attributes:
        frames_done: frames whose outputs exist (parts skipped on resume included).
        frames_total: frames of the task.
        tokens_done: tokens embedded by this run (both models; skipped parts excluded).
        tokens_todo: tokens this run has to embed in total (known once the task has tokenized).
    """

    frames_done: int = 0
    frames_total: int = 0
    tokens_done: int = 0
    tokens_todo: int = 0


class ProgressFile:
    """Where one task reports its `TaskProgress` (None path: report nowhere)."""

    def __init__(self, path: Path | None, callback: Callable[[TaskProgress], None] | None = None) -> None:
        self.path = path
        self.callback = callback

    def write(self, progress: TaskProgress) -> None:
        if self.callback is not None:
            self.callback(progress)
        if self.path is not None:
            try:
                atomic_write_text(self.path, json.dumps(asdict(progress)))
            except OSError as exc:  # progress is cosmetic: never fail a task for it
                log.debug("cannot write progress file %s: %s", self.path, exc)


def read_progress_dir(directory: Path) -> dict[str, TaskProgress]:
    """Every ``*.json`` progress file of ``directory`` (unreadable or half-written ones skipped)."""
    out: dict[str, TaskProgress] = {}
    if not directory.is_dir():
        return out
    for path in directory.glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out[path.stem] = TaskProgress(
                **{k: int(data.get(k, 0)) for k in TaskProgress.__dataclass_fields__}
            )
        except (OSError, ValueError, TypeError):
            continue
    return out


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(per_s: float | None) -> str:
    if per_s is None:
        return "?"
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if per_s >= scale:
            return f"{per_s / scale:.2f}{unit}"
    return f"{per_s:.0f}"


@dataclass(frozen=True)
class Snapshot:
    """The whole run at one moment: sums over tasks plus the derived rate and ETA."""

    frames_done: int
    frames_total: int
    tokens_done: int
    tokens_todo: int
    tokens_per_s: float | None
    eta_s: float | None

    def line(self) -> str:
        pct = 100.0 * self.frames_done / self.frames_total if self.frames_total else 100.0
        return (
            f"{self.frames_done:,}/{self.frames_total:,} frames ({pct:.1f}%), "
            f"{format_rate(self.tokens_per_s)} tokens/s, ETA {format_eta(self.eta_s)}"
        )


def snapshot(tasks: dict[str, TaskProgress], frames_total: int, elapsed_s: float) -> Snapshot:
    """Sum the tasks; tokens/s over ``elapsed_s``; ETA from the tokens still to embed at that rate
    (None until some tokens are done)."""
    frames_done = sum(t.frames_done for t in tasks.values())
    tokens_done = sum(t.tokens_done for t in tasks.values())
    tokens_todo = sum(t.tokens_todo for t in tasks.values())
    rate = tokens_done / elapsed_s if elapsed_s > 0 and tokens_done > 0 else None
    eta = (max(tokens_todo - tokens_done, 0) / rate) if rate else None
    return Snapshot(
        min(frames_done, frames_total) if frames_total else frames_done,
        frames_total,
        tokens_done,
        tokens_todo,
        rate,
        eta,
    )


class RunProgress:
    """The run's one display: a tqdm bar over frames on a terminal, periodic log lines elsewhere.

    Args:
        frames_total: frames of the whole run.
        enabled: False shows nothing (``VIRNUCPRO_PROGRESS=0``, DAG tasks).
        tty: draw a bar; default: stderr is a terminal.
        log_every_s: seconds between log lines when not drawing a bar.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        frames_total: int,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        log_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        desc: str = "predict",
    ) -> None:
        self.frames_total = frames_total
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.log_every_s = log_every_s
        self.clock = clock
        self.started = clock()
        self.last_log = self.started
        self.tasks: dict[str, TaskProgress] = {}
        self.lines: list[str] = []  # what was logged (tests and the run record read it)
        self._bar: Any = None
        if enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=frames_total, unit="frame", unit_scale=True, desc=desc, leave=False, file=sys.stderr
            )

    def update(self, task: str, progress: TaskProgress) -> None:
        self.tasks[task] = progress
        self.refresh()

    def update_many(self, tasks: dict[str, TaskProgress]) -> None:
        self.tasks.update(tasks)
        self.refresh()

    def snapshot(self) -> Snapshot:
        return snapshot(self.tasks, self.frames_total, self.clock() - self.started)

    def refresh(self) -> None:
        if not self.enabled:
            return
        snap = self.snapshot()
        if self._bar is not None:
            self._bar.n = snap.frames_done
            self._bar.set_postfix_str(
                f"{format_rate(snap.tokens_per_s)} tok/s, ETA {format_eta(snap.eta_s)}", refresh=False
            )
            self._bar.refresh()
            return
        now = self.clock()
        if now - self.last_log >= self.log_every_s:
            self.last_log = now
            self._log(snap)

    def _log(self, snap: Snapshot) -> None:
        line = snap.line()
        self.lines.append(line)
        log.info("progress: %s", line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.tasks:
            self._log(self.snapshot())


__all__ = [
    "ProgressFile",
    "RunProgress",
    "Snapshot",
    "TaskProgress",
    "format_eta",
    "format_rate",
    "read_progress_dir",
    "snapshot",
]
