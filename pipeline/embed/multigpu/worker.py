"""The embedding worker process: one shard (or sub-shard) on one device, started by the coordinator.

`run_job` is the target of a spawned process. It never returns a value through memory: it writes
a small JSON result file (atomically) and exits with a status code, so the coordinator can tell a
clean finish, a reported error and a crash (signal, OOM kill, segfault) apart from the exit code and
the presence of that file alone.

The worker's stdout and stderr (file descriptors 1 and 2, so C-level messages and faulthandler
dumps too) go to the per-worker log file.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import EmbedConfig
from pipeline.core.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
    NumericalError,
    ResumeMismatchError,
    VirNucProError,
)

log = logging.getLogger(__name__)

# Errors that retrying on the same or another device cannot fix: the coordinator stops the run
# and re-raises them instead of retrying (a bad option, input or checkpoint fails everywhere).
FATAL_ERRORS: tuple[type[VirNucProError], ...] = (
    ConfigError,
    InputError,
    ModelLoadError,
    BackendUnavailableError,
    ResumeMismatchError,
    NumericalError,
)

EXIT_OK = 0
EXIT_ERROR = 1

# Seconds between checks that the coordinator is still alive.
_PARENT_POLL_S = 2.0


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs (picklable; sent to a spawned interpreter).

    Attributes:
        worker: the coordinator's worker slot index k (logs go to ``worker-<k>.log``).
        attempt: 0 for the first run of this task, 1.. for retries.
        task: task name (shard stem, or ``<stem>.r<j>`` for a redistributed sub-shard).
        shard_path: parquet shard with columns ``id, nucleotide, protein``.
        out_dir: the shard's embedding output directory.
        column: the shard column to embed.
        kind: model kind (``esm2`` or ``dnabert-s``).
        cfg: embed config with ``device`` already set to this worker's device.
        gpu: CUDA device index this worker owns, or None on CPU.
        log_path: per-worker log file (appended to across attempts).
        result_path: where the JSON result is written.
        log_level: logging level name for the worker.
        threads: intra-op CPU threads for torch (None: leave torch's default).
        initializer: optional picklable ``f(worker, attempt)`` run in the worker before embedding
            (thread settings, instrumentation); like ``multiprocessing.Pool(initializer=...)``.
    """

    worker: int
    attempt: int
    task: str
    shard_path: Path
    out_dir: Path
    column: str
    kind: str
    cfg: EmbedConfig
    gpu: int | None
    log_path: Path
    result_path: Path
    log_level: str = "INFO"
    threads: int | None = None
    initializer: Callable[[int, int], None] | None = None


def _redirect_output(log_path: Path) -> None:
    """Send fds 1 and 2 to the log file so native crashes and prints are kept too."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115


def _watch_parent(parent_pid: int) -> None:
    """If the coordinator dies (even by SIGKILL), stop cleanly instead of holding the GPU forever."""

    def loop() -> None:
        while True:
            time.sleep(_PARENT_POLL_S)
            if os.getppid() != parent_pid:
                log.error("coordinator (pid %d) is gone; stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def _call_embed_shard(job: WorkerJob) -> dict[str, Any]:
    from pipeline.embed.runner import embed_shard

    return embed_shard(job.shard_path, job.column, job.kind, job.cfg, job.out_dir)


def run_job(job: WorkerJob, parent_pid: int) -> None:
    """Process entry point: embed one shard, write the result file, exit with a status code.

    Result file (JSON): ``{"status": "ok"|"error", "pid", "worker", "attempt", "task",
    "started_at"/"finished_at" (epoch seconds around the whole job, model load included),
    "record" (embed_shard's run record, ok only), "error_type", "message", "fatal",
    "traceback" (error only)}``.
    """
    # Own process group: a terminal's Ctrl-C reaches only the coordinator, which forwards exactly
    # one SIGTERM (a second signal would make the runner abort its current part).
    os.setpgrp()
    _redirect_output(job.log_path)
    faulthandler.enable(file=sys.stderr)
    logging.basicConfig(
        level=job.log_level,
        format=f"%(asctime)s %(levelname)s worker-{job.worker} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    _watch_parent(parent_pid)
    started = time.time()
    result: dict[str, Any] = {
        "pid": os.getpid(),
        "worker": job.worker,
        "attempt": job.attempt,
        "task": job.task,
        "device": job.cfg.device,
        "started_at": started,
    }
    log.info(
        "task %s attempt %d on %s: %s -> %s (resume=%s)",
        job.task,
        job.attempt,
        job.cfg.device,
        job.shard_path,
        job.out_dir,
        job.cfg.resume,
    )
    code = EXIT_OK
    try:
        if job.gpu is not None:
            import torch

            # Makes this process's current device its own GPU, so kernels and allocators that use
            # "the current device" never create a context on GPU 0.
            torch.cuda.set_device(job.gpu)
        if job.threads is not None:
            import torch

            torch.set_num_threads(job.threads)
        if job.initializer is not None:
            job.initializer(job.worker, job.attempt)
        record = _call_embed_shard(job)
        result.update(status="ok", record=record)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the result file
        log.error("task %s failed: %s: %s\n%s", job.task, type(exc).__name__, exc, traceback.format_exc())
        result.update(
            status="error",
            error_type=type(exc).__name__,
            message=str(exc),
            fatal=isinstance(exc, FATAL_ERRORS),
            traceback=traceback.format_exc(),
        )
        code = exc.exit_code if isinstance(exc, VirNucProError) else EXIT_ERROR
    result["finished_at"] = time.time()
    atomic_write_text(job.result_path, json.dumps(result, indent=1, default=str))
    log.info(
        "task %s attempt %d finished: %s in %.2f s",
        job.task,
        job.attempt,
        result["status"],
        result["finished_at"] - started,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: skip interpreter teardown (CUDA/DataLoader atexit hooks can hang a dying worker).
    os._exit(code)
