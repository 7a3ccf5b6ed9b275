"""Facts about the environment a run happened in, recorded with every run and metric row."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

_PACKAGES = (
    "virnucpro",
    "torch",
    "fair-esm",
    "transformers",
    "tokenizers",
    "numpy",
    "flash-attn",
    "duckdb",
    "apache-airflow",
)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    return f"{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def git_commit(cwd: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``-dirty`` when it has changes), or None outside git."""
    root = cwd or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def device_info() -> dict[str, Any]:
    """Accelerator name and count; imports torch lazily so light callers stay light."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return {
            "device_name": torch.cuda.get_device_name(0),
            "device_count": count,
            "cuda": torch.version.cuda,
        }
    return {
        "device_name": f"cpu ({platform.processor() or platform.machine()})",
        "device_count": 0,
        "cuda": None,
    }


def environment_info(with_device: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "time": utc_now(),
    }
    if with_device:
        info.update(device_info())
    return info
