"""Fault injection helpers: child processes under resource limits, immutable files, state snapshots.

Faults are injected from outside the code under test wherever the operating system can do it
(``RLIMIT_FSIZE`` for a full disk, ``RLIMIT_AS`` for a memory ceiling, ``chattr +i`` for an
immutable file, real signals). Where a fault has to land at an exact point of a run (a signal in the
middle of the input, a crash between two renames), the child runs a short script that wraps one
library function to raise the fault there; everything else runs unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.fa"
CLI = "from pipeline.cli import main; main()"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a child: this tree first on the path, no progress bars, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["VIRNUCPRO_PROGRESS"] = "0"
    env.update(extra or {})
    return env


def run_python(
    code: str,
    *args: str,
    fsize: int | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` in a child; ``fsize`` caps every file it writes (bytes).

    Python ignores SIGXFSZ, so a write past the cap fails with ``OSError(EFBIG)`` - the same path
    through the code as a full disk (``ENOSPC``), without filling one.
    """

    def limits() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limits,
        check=False,
    )


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """``virnucpro ARGS`` in a child (same limits as `run_python`)."""
    return run_python(CLI, *args, **kwargs)


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int | None = None) -> None:
    """A failed command: non-zero exit (``code`` when given), no traceback, an ``error:`` line."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr, proc.stderr


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def entries(root: Path) -> set[str]:
    """Every name under ``root``, directories and hidden files included (temporary leftovers show)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make ``paths`` immutable (``chattr +i``: not even root may write, rename or delete them).

    ``chmod`` does not stop root, so it is no test of an unwritable file; where ``chattr +i`` is not
    available (not root, or a file system without the flag, such as tmpfs) the test is skipped.
    """
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: cannot make a file immutable here")
    done: list[Path] = []
    try:
        for path in paths:
            proc = _chattr("+i", path)
            if proc.returncode != 0:
                pytest.skip(
                    f"chattr +i {path} failed ({proc.stderr.strip()}): needs root and a file "
                    "system with the immutable flag (ext4, xfs, btrfs)"
                )
            done.append(path)
        yield
    finally:
        for path in done:
            _chattr("-i", path)


def memory_probe(setup: str, call: str, *, ceiling_mb: int, timeout: float = 300) -> dict:
    """Run ``call`` in a child whose address space may grow at most ``ceiling_mb`` past its size
    after ``setup`` (imports, paths) ran; returns ``{"error": type name or None, "message": ...}``.

    ``RLIMIT_AS`` counts memory that is reserved but not yet touched too (``torch.empty``), so an
    allocation that a later check would have refused still trips the ceiling.
    """
    code = f"""
import json, resource, sys
{textwrap.dedent(setup)}
def _vm_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + {ceiling_mb} * 2**20, resource.RLIM_INFINITY))
try:
    {call}
    result = {{"error": None, "message": ""}}
except BaseException as exc:
    result = {{"error": type(exc).__name__, "message": str(exc)}}
print("RESULT " + json.dumps(result))
"""
    proc = run_python(code, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"probe crashed (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])
