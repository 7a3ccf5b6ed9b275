"""Deciding what an embedding run may reuse from its output directory.

Parts are deterministic: part ``p`` holds rows ``order[p*part_size:(p+1)*part_size]`` of the
shard's length-sorted order, so resuming only needs to know which parts are intact. This module
refuses directories it must not touch (non-empty without resume; made with another model,
precision or input) and sorts existing parts into valid (skip) and invalid (redo).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, ResumeMismatchError
from pipeline.embed.parts import RUN_RECORD_FILE, PartFiles, check_part, part_indices, read_metadata

log = logging.getLogger(__name__)

#: metadata.json fields that must be identical for a resume (seed only matters for random weights).
RESUME_FIELDS = (
    "format",
    "kind",
    "model",
    "column",
    "precision",
    "fingerprint",
    "n_rows",
    "part_size",
    "order",
    "dtype",
    "hidden_size",
    "repr_layer",
)


def mismatches(existing: dict[str, Any], wanted: dict[str, Any], fields: Sequence[str]) -> list[str]:
    """Human-readable differences of ``fields`` (only those present in ``wanted``)."""
    out = []
    for key in fields:
        if key in wanted and existing.get(key) != wanted[key]:
            out.append(f"{key} (existing {existing.get(key)!r}, now {wanted[key]!r})")
    if (
        str(wanted.get("model", "")).startswith("random:")
        and "seed" in wanted
        and existing.get("seed") != wanted["seed"]
    ):
        out.append(f"seed (existing {existing.get('seed')!r}, now {wanted['seed']!r})")
    return out


def check_output_dir(out_dir: Path, wanted: dict[str, Any], *, resume: bool) -> dict[str, Any] | None:
    """Refuse what must not be reused; return the existing metadata (None for a fresh directory).

    Raises:
        ConfigError: the directory has files and ``resume`` is off.
        ResumeMismatchError: resuming outputs made with different settings or input; the message
            names every differing field.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} is a file; give a directory")
    entries = [p for p in out_dir.iterdir()] if out_dir.is_dir() else []
    if not entries:
        return None
    if not resume:
        raise ConfigError(
            f"output directory {out_dir} is not empty; pass --resume to continue the run "
            "that wrote it, or choose an empty directory"
        )
    existing = read_metadata(out_dir)
    if existing is None:
        raise ResumeMismatchError(
            f"cannot resume in {out_dir}: it has files but no metadata.json, so it was not "
            "written by `virnucpro embed`; choose an empty directory"
        )
    diffs = mismatches(existing, wanted, RESUME_FIELDS)
    if diffs:
        raise ResumeMismatchError(
            f"cannot resume in {out_dir}: it was made with different settings: "
            f"{'; '.join(diffs)}. Use the original settings, or an empty directory"
        )
    return existing


def sweep_valid_parts(
    out_dir: Path, part_ids: Sequence[Sequence[str]], *, dim: int, fingerprint: str
) -> set[int]:
    """Indices of parts that are complete and intact; every other part's files are removed.

    ``part_ids[p]`` are the ids part ``p`` must hold, in order. Leftover temporary files of
    interrupted atomic writes are removed too.
    """
    out_dir = Path(out_dir)
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    valid: set[int] = set()
    for index in part_indices(out_dir):
        files = PartFiles(out_dir, index)
        if index >= len(part_ids):
            log.warning("removing %s: beyond the %d parts of this shard", files.stem, len(part_ids))
            files.remove()
            continue
        problem = check_part(out_dir, index, expected_ids=part_ids[index], dim=dim, fingerprint=fingerprint)
        if problem is None:
            valid.add(index)
        else:
            log.warning("redoing %s: %s", files.stem, problem)
            files.remove()
    return valid


__all__ = ["RESUME_FIELDS", "RUN_RECORD_FILE", "check_output_dir", "mismatches", "sweep_valid_parts"]
