"""Path rules for values that arrive from outside (DAG params): inside a configured root, no ``..``
escape, no symbolic link out of the root; the run-directory lock; reading small state files.

The roots come from `pipeline.core.config.Settings` (``VIRNUCPRO_INPUT_ROOT``,
``VIRNUCPRO_OUTPUT_ROOT``, ``VIRNUCPRO_METRICS_ROOT``); the CLI does not use them (its user already
chose the paths with their own permissions), the DAG steps do (a trigger form is not a shell).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, OutputIntegrityError, RunInProgressError, describe_os_error


def path_inside(
    value: str | os.PathLike[str],
    root: str | os.PathLike[str],
    what: str,
    setting: str,
    *,
    allow_root: bool = False,
) -> Path:
    """``value`` resolved (symbolic links followed, ``..`` removed), refused unless it lies inside
    ``root`` (also resolved). ``what`` names the parameter and ``setting`` the variable that sets the
    root, for the message. A relative ``value`` is taken relative to ``root``.
    """
    text = os.fspath(value)
    if not str(text).strip():
        raise ConfigError(f"{what} is empty; give a path inside {root} ({setting})")
    if "\x00" in str(text):
        raise ConfigError(f"{what} contains a NUL character; give a plain path inside {root} ({setting})")
    base = Path(root).expanduser().resolve()
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = candidate.resolve()
    inside = resolved.is_relative_to(base) and (allow_root or resolved != base)
    if not inside:
        raise ConfigError(
            f"{what} {text} resolves to {resolved}, outside the allowed root {base}; give a path below "
            f"{base} (symbolic links and '..' are followed before the check) or change {setting}"
        )
    return resolved


def read_json_state(path: str | os.PathLike[str], what: str, remedy: str) -> Any:
    """Parse a small JSON state file the pipeline wrote itself (``predict_inputs.json``,
    ``run_record.json``); a missing file raises FileNotFoundError, garbage `OutputIntegrityError`
    naming the path and ``remedy``. The content itself is never echoed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise describe_os_error(exc, path) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise OutputIntegrityError(f"{path}: the {what} is corrupt (not valid JSON); {remedy}") from None


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike[str], *, shared: bool = False) -> Iterator[Path]:
    """Hold ``directory`` locked (``flock`` on the directory itself, so no file is added to it) for
    the ``with`` block; a second holder is refused at once with `RunInProgressError` and the first
    is not disturbed. The directory is created when missing; an existing file is locked in place.

    ``shared=True`` takes a shared lock: several holders may share it (the mapped embed tasks of one
    DAG run), but no exclusive holder (another run's prepare) may join them. The kernel drops the
    lock when the process dies, so a killed run never leaves a stale lock behind.
    """
    root = Path(directory)
    if root.is_file():  # a shard file: lock it in place
        fd = os.open(root, os.O_RDONLY)
    else:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise RunInProgressError(
                f"{root} is in use by another run; wait for it to finish or give another output directory"
            ) from None
        yield root
    finally:
        os.close(fd)  # closing the descriptor releases the lock
