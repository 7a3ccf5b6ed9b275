"""Worker processes and signals: spawn, wait, stop; the one place that handles SIGTERM/SIGINT.

`StopSignals` turns SIGTERM/SIGINT into a flag for whatever runs in this process: the coordinator
(which forwards one SIGTERM to each worker and kills them on a second signal), a worker process
and the in-process CPU run (which finish the parts already issued, then raise `Interrupted`).

`ProcessExecutor` starts one spawned process per job (`pipeline.embed.multigpu.worker.run_job`),
waits on their sentinels, reads each finished process's typed `WorkerResult`, and stops them
(SIGTERM, a grace period, then SIGKILL). Processes and pipes only: no multiprocessing queues or
locks, so nothing is left for the resource tracker to warn about at exit.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.embed.multigpu.worker import WorkerJob, WorkerResult, run_job

log = logging.getLogger(__name__)

#: How long workers get to finish their current part after SIGTERM before they are killed.
TERMINATE_GRACE_S = 120.0
POLL_S = 0.5


class StopSignals:
    """SIGTERM/SIGINT as a counter and an event while `installed` (main thread only).

    The first signal sets `event` (finish what was issued, then stop); later ones only count up
    (``count > 1``: the caller may stop waiting, e.g. kill its workers). With ``abort_on_second``
    a second signal raises `KeyboardInterrupt` at once (an in-process run that must not wait).
    """

    def __init__(self, *, abort_on_second: bool = False) -> None:
        self.event = threading.Event()
        self.count = 0
        self.first: int | None = None
        self.abort_on_second = abort_on_second

    def is_set(self) -> bool:
        return self.event.is_set()

    def handle(self, signum: int) -> None:
        """What the handler does (callable directly, e.g. from tests)."""
        self.count += 1
        self.first = self.first or signum
        if self.count > 1 and self.abort_on_second:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without finishing the current part")
        log.warning(
            "signal %d: finishing the work already started, then stopping (rerun with --resume)%s",
            signum,
            " (second signal)" if self.count > 1 else "",
        )
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, lambda signum, _frame: self.handle(signum))
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


@dataclass
class Running:
    """A started worker process and the job it runs."""

    process: Any
    job: WorkerJob
    started: float


class ProcessExecutor:
    """Spawned worker processes, one per running job, keyed by slot index."""

    def __init__(self, pid_file: Path) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.pid_file = pid_file
        self.running: dict[int, Running] = {}

    def start(self, slot: int, job: WorkerJob) -> Running:
        job.result_path.unlink(missing_ok=True)
        process = self.ctx.Process(target=run_job, args=(job, os.getpid()), name=f"virnucpro-worker-{slot}")
        process.start()
        run = Running(process, job, time.time())
        self.running[slot] = run
        self._write_pids()
        return run

    def wait(self, timeout: float = POLL_S) -> list[int]:
        """Slots whose process has ended (empty after ``timeout`` seconds without one)."""
        sentinels = {r.process.sentinel: k for k, r in self.running.items()}
        if not sentinels:
            return []
        ready = multiprocessing.connection.wait(list(sentinels), timeout=timeout)
        return [sentinels[s] for s in ready]

    def collect(self, slot: int) -> tuple[Running, WorkerResult]:
        """Reap an ended process and read its result (``crashed`` when it left none)."""
        run = self.running.pop(slot)
        run.process.join()
        self._write_pids()
        job = run.job
        return run, WorkerResult.read(
            job.result_path,
            worker=job.worker,
            attempt=job.attempt,
            task=job.task,
            exit_code=run.process.exitcode,
        )

    def stop_all(self, stop: StopSignals, grace_s: float = TERMINATE_GRACE_S) -> None:
        """SIGTERM every running worker (each finishes its current part), then wait for them.

        Workers still running after the grace period, or when another signal arrives, are killed.
        """
        for run in self.running.values():
            if run.process.is_alive():
                run.process.terminate()
        deadline = time.time() + grace_s
        count = stop.count
        for run in self.running.values():
            while run.process.is_alive() and time.time() < deadline and stop.count <= max(count, 1):
                run.process.join(POLL_S)
            if run.process.is_alive():
                log.error(
                    "worker pid %d did not stop (grace %.0f s, signals %d); killing it",
                    run.process.pid,
                    grace_s,
                    stop.count,
                )
                run.process.kill()
            run.process.join()
        self.running.clear()
        with contextlib.suppress(OSError):
            self._write_pids()

    def _write_pids(self) -> None:
        atomic_write_text(
            self.pid_file,
            json.dumps(
                {
                    str(k): {"pid": r.process.pid, "task": r.job.task, "device": r.job.device}
                    for k, r in self.running.items()
                },
                indent=1,
            ),
        )


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


__all__ = ["POLL_S", "TERMINATE_GRACE_S", "ProcessExecutor", "Running", "StopSignals", "log_tail"]
