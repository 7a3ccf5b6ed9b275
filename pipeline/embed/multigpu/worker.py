"""The worker process: one per GPU slot, resident for the task it is given, started by the executor.

A worker loads its models once (`FrameWork`: DNABERT-S, ESM-2 and the classifier head, kept in
`_RESIDENT` for every task the process runs) and takes its shard through all of them; nothing is
respawned between models. `run_job` is the target of a spawned process. It never returns a value
through memory: it writes a small JSON `WorkerResult` (atomically) and exits with a status code, so
the coordinator can tell a clean finish, a reported error and a crash (signal, OOM kill,
segfault) apart from the exit code and that file alone.

The worker's stdout and stderr (file descriptors 1 and 2, so C-level messages and faulthandler
dumps too) go to the per-worker log file.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

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


class Work(Protocol):
    """What a worker runs for one task (picklable).

    ``run`` embeds or scores ``shard_path`` into ``out_dir`` on ``device`` and returns a
    JSON-serialisable record; ``stop`` is set by SIGTERM/SIGINT; ``progress`` is where the task
    reports its counts for the run's progress display (a `pipeline.embed.progress.ProgressFile`).
    """

    def run(
        self,
        shard_path: Path,
        out_dir: Path,
        *,
        device: str,
        resume: bool,
        stop: threading.Event,
        progress: Any = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EmbedWork:
    """One model over one shard column (`pipeline.embed.runner.embed_shard`)."""

    column: str
    kind: str
    cfg: EmbedConfig

    def run(
        self,
        shard_path: Path,
        out_dir: Path,
        *,
        device: str,
        resume: bool,
        stop: threading.Event,
        progress: Any = None,
    ) -> dict[str, Any]:
        from pipeline.embed.runner import embed_shard

        return embed_shard(
            shard_path,
            self.column,
            self.kind,
            replace(self.cfg, device=device, resume=resume),
            out_dir,
            stop=stop,
        )


# Models loaded by this process, reused by every task it runs with the same models.
_RESIDENT: dict[tuple, Any] = {}


@dataclass(frozen=True)
class FrameWork:
    """DNABERT-S -> ESM-2 -> classifier head over one shard (`pipeline.embed.frames.score_shard`)."""

    job: Any  # pipeline.embed.frames.FrameJob

    def run(
        self,
        shard_path: Path,
        out_dir: Path,
        *,
        device: str,
        resume: bool,
        stop: threading.Event,
        progress: Any = None,
    ) -> dict[str, Any]:
        from pipeline.embed.frames import load_frame_models, score_shard

        job = replace(self.job, device=device, resume=resume)
        key = job.models_key()
        if key not in _RESIDENT:
            _RESIDENT.clear()  # one set of models per process
            _RESIDENT[key] = load_frame_models(job)
        models = _RESIDENT[key]
        result = score_shard(shard_path, job, out_dir, models=models, stop=stop, progress=progress)
        return result.to_json()


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs (picklable; sent to a spawned interpreter).

    Attributes:
        worker: the coordinator's slot index k (logs go to ``worker-<k>.log``).
        attempt: 0 for the first run of this task, 1.. for retries.
        task: task name (shard stem, or ``<stem>.r<j>`` for a redistributed sub-shard).
        shard_path / out_dir: input shard and output directory.
        work: what to run (`EmbedWork` or `FrameWork`).
        device: this worker's device; gpu: the CUDA index it owns, or None on CPU.
        resume: keep the parts an earlier attempt wrote.
        log_path / result_path / progress_path: per-worker log, JSON result, progress counts.
        log_level: logging level name for the worker.
        threads: intra-op CPU threads for torch (None: leave torch's default).
        initializer: optional picklable ``f(worker, attempt)`` run in the worker first
            (thread settings, instrumentation); like ``multiprocessing.Pool(initializer=...)``.
        compile_cache_dir: on-disk cache for compiled kernels, shared by workers and later runs
            (`Settings.compile_cache_dir`); None leaves torch's default.
    """

    worker: int
    attempt: int
    task: str
    shard_path: Path
    out_dir: Path
    work: Any
    device: str
    gpu: int | None
    resume: bool
    log_path: Path
    result_path: Path
    progress_path: Path | None = None
    log_level: str = "INFO"
    threads: int | None = None
    initializer: Callable[[int, int], None] | None = None
    compile_cache_dir: Path | None = None


@dataclass
class WorkerResult:
    """A worker's verdict on one task (the JSON file `run_job` writes; typed on both sides).

    Attributes:
        status: ``ok``, ``error`` (reported by the worker) or ``crashed`` (no result file).
        record: the work's record (``ok`` only).
        error_type / message / fatal / traceback: the error (``error`` only).
        exit_code: the process's exit code (set by the coordinator).
        started_at / finished_at: epoch seconds around the whole task, model load included.
    """

    status: str
    worker: int
    attempt: int
    task: str
    device: str = ""
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    record: dict[str, Any] | None = None
    error_type: str | None = None
    message: str | None = None
    fatal: bool = False
    traceback: str | None = None
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.exit_code in (None, 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    @classmethod
    def read(cls, path: Path, *, worker: int, attempt: int, task: str, exit_code: int | None) -> WorkerResult:
        """The result file of a finished process, or a ``crashed`` result when it has none."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = set(cls.__dataclass_fields__)
            result = cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError):
            result = cls("crashed", worker, attempt, task)
        result.exit_code = exit_code
        return result


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
    import signal

    def loop() -> None:
        while True:
            time.sleep(_PARENT_POLL_S)
            if os.getppid() != parent_pid:
                log.error("coordinator (pid %d) is gone; stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def use_compile_cache(directory: Path | None) -> None:
    """Point torch's compile caches (Inductor, Triton) at ``directory`` for this process.

    Set before the first compile; the spawned workers of a run and later runs share it, so only
    the first run on a machine pays for compiling.
    """
    if directory is None:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")


def run_job(job: WorkerJob, parent_pid: int) -> None:
    """Process entry point: run one task, write the `WorkerResult`, exit with a status code."""
    from pipeline.embed.multigpu.executor import StopSignals
    from pipeline.embed.progress import ProgressFile

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
    use_compile_cache(job.compile_cache_dir)
    result = WorkerResult("ok", job.worker, job.attempt, job.task, job.device, os.getpid(), time.time())
    log.info(
        "task %s attempt %d on %s: %s -> %s (resume=%s)",
        job.task,
        job.attempt,
        job.device,
        job.shard_path,
        job.out_dir,
        job.resume,
    )
    code = EXIT_OK
    stop = StopSignals()
    try:
        with stop.installed():
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
            result.record = job.work.run(
                job.shard_path,
                job.out_dir,
                device=job.device,
                resume=job.resume,
                stop=stop.event,
                progress=ProgressFile(job.progress_path),
            )
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the result file
        log.error("task %s failed: %s: %s\n%s", job.task, type(exc).__name__, exc, traceback.format_exc())
        result.status = "error"
        result.error_type = type(exc).__name__
        result.message = str(exc)
        result.fatal = isinstance(exc, FATAL_ERRORS)
        result.traceback = traceback.format_exc()
        code = exc.exit_code if isinstance(exc, VirNucProError) else EXIT_ERROR
    result.finished_at = time.time()
    atomic_write_text(job.result_path, result.to_json())
    log.info(
        "task %s attempt %d finished: %s in %.2f s",
        job.task,
        job.attempt,
        result.status,
        result.finished_at - (result.started_at or result.finished_at),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: skip interpreter teardown (CUDA atexit hooks can hang a dying worker).
    os._exit(code)


__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "FATAL_ERRORS",
    "EmbedWork",
    "FrameWork",
    "Work",
    "WorkerJob",
    "WorkerResult",
    "run_job",
    "use_compile_cache",
]
