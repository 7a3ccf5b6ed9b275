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

LOCK_FILE = ".virnucpro.lock"


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
def run_lock(
    directory: str | os.PathLike[str], *, shared: bool = False, name: str = LOCK_FILE, owner: str = ""
) -> Iterator[Path]:
    """Hold ``directory/name`` locked (``flock``) for the ``with`` block; a second holder is refused
    at once with `RunInProgressError` and the first is not disturbed.

    ``shared=True`` takes a shared lock: several holders may share it (the mapped embed tasks of one
    DAG run), but no exclusive holder (another run's prepare) may join them. The kernel drops the
    lock when the process dies, so a killed run never leaves a stale lock behind.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(path)
            raise RunInProgressError(
                f"{root} is in use by another run ({holder or 'holder unknown'}); wait for it to end or "
                "give another output directory"
            ) from None
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}{' ' + owner if owner else ''}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()[:200]
    except OSError:
        return ""
