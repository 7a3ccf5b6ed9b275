"""Atomic file writes: write to a temporary file in the same directory, fsync, then rename.

Several files that only make sense together (a stage's outputs) are written into a `staging_dir`
and published with `publish_together`: all of them, or, after any error, none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so readers
    never see a partial file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; published files should get the usual umask-derived mode instead
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file; name the one being published
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open()`` that only publishes the file at ``path`` if the ``with`` block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


# --------------------------------------------------------------------------------------------------
# several files published together


STAGING_PREFIX = ".staging-"
_BACKUP_SUFFIX = ".old"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    # a rename is durable only once its directory is; some file systems refuse fsync on a directory
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_staging(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed `staging_dir` / `publish_together` left in ``directory``.

    Only entries named with the pid of a process that no longer runs are touched, so a concurrent
    writer's staging area survives. Returns the removed paths.
    """
    root = Path(directory)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        name = entry.name
        if name.startswith(STAGING_PREFIX):
            pid_text = name[len(STAGING_PREFIX) :].split("-", 1)[0]
        elif name.startswith(".") and name.endswith(_BACKUP_SUFFIX) and ".pid" in name:
            pid_text = name.rsplit(".pid", 1)[1].split("-", 1)[0]
        else:
            continue
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staging_dir(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh hidden directory inside ``directory`` (created if needed) for files that are later
    published with `publish_together`; removed on exit with whatever is still in it.

    Staging beside the targets keeps every later rename on one file system. Its name carries this
    process's pid, so that `remove_stale_staging` can tell a killed run's leftovers from a live one.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish_together(
    moves: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    marker: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
) -> None:
    """Rename every ``(staged, target)`` of ``moves`` onto its target: all of them, or none.

    The staged files must be complete and on the targets' file system (see `staging_dir`). Each
    existing target is first moved aside, then replaced; if any rename fails (an immutable or
    read-only target, a signal turned into an exception), every step done so far is undone in
    reverse, so the earlier targets are back in place, and the error is raised.

    ``marker`` ``(staged, target)`` is the completion record that readers check: it is moved aside
    before the first target is touched and published after the last, so a process killed between
    two renames (which nothing can undo) leaves a state without a marker, which readers refuse.
    """
    token = f"pid{os.getpid()}-{secrets.token_hex(4)}"
    pairs = [(Path(s), Path(t)) for s, t in moves]
    undo: list[tuple[Path, Path]] = []  # renames done, as (now at, back to)

    def rename(src: Path, dst: Path) -> None:
        os.replace(src, dst)
        undo.append((dst, src))

    def aside(target: Path) -> None:
        if target.exists() or target.is_symlink():
            rename(target, target.with_name(f".{target.name}.{token}{_BACKUP_SUFFIX}"))

    try:
        if marker is not None:
            aside(Path(marker[1]))
        for staged, target in pairs:
            aside(target)
            rename(staged, target)
        if marker is not None:
            rename(Path(marker[0]), Path(marker[1]))
    except BaseException:
        for now_at, back_to in reversed(undo):
            try:
                os.replace(now_at, back_to)
            except OSError:  # nothing better to do than say where the pieces are
                logging.getLogger(__name__).error("could not move %s back to %s", now_at, back_to)
        raise
    for directory in {t.parent for _, t in pairs}:
        _fsync_dir(directory)
    for now_at, _ in undo:
        if now_at.name.endswith(f".{token}{_BACKUP_SUFFIX}"):
            with contextlib.suppress(OSError):
                now_at.unlink()
