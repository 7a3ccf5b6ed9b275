"""The run record: one type for every ``run_record.json`` (predict, embed, the DAG's record step).

Schema ``virnucpro.run/1`` (docs/INTERNALS.md): ``schema``, ``run_id``, ``kind`` (``predict`` |
``embed``), ``started_at`` / ``finished_at`` (ISO 8601, UTC), ``environment``, ``config``,
``stages`` (one row per stage: ``stage, model, seconds, sequences, tokens, tokens_per_s,
packing_efficiency, backend, precision, device`` plus stage-specific keys) and run-specific keys
(``counts``, ``outputs``, ``workers``, ``note``, ...). Built with these dataclasses, written by
`write_run_record` only, read back with `read_run_record`; the metrics store ingests the same JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import InputError

RUN_SCHEMA = "virnucpro.run/1"
RUN_RECORD_FILE = "run_record.json"


@dataclass
class StageRow:
    """One stage of a run (the columns of the metrics store's ``stage_metrics`` table).

    ``extra`` holds stage-specific keys (``kind``, ``shard``, ``device_seconds``, ...); they are
    written beside the fixed keys, not nested.
    """

    stage: str
    seconds: float
    model: str | None = None
    sequences: int | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    packing_efficiency: float | None = None
    backend: str | None = None
    precision: str | None = None
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        row["seconds"] = round(float(self.seconds), 6)
        return {**row, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageRow:
        if not isinstance(data, dict) or "stage" not in data:
            raise InputError(f"a run record stage must be an object with a 'stage' name, got {data!r:.80}")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: data.get(k) for k in names}
        known["seconds"] = float(known.get("seconds") or 0.0)
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


def stage_row(stage: str, seconds: float, **values: Any) -> dict[str, Any]:
    """A stage row as a dict: the fixed keys (None when not given) plus any extra ones."""
    names = {f.name for f in fields(StageRow)} - {"extra", "stage", "seconds"}
    fixed = {k: v for k, v in values.items() if k in names}
    extra = {k: v for k, v in values.items() if k not in names}
    return StageRow(stage, seconds, **fixed, extra=extra).to_dict()


@dataclass
class RunRecord:
    """A whole ``run_record.json``.

    Attributes:
        run_id / kind / started_at / finished_at / environment / config: the fixed header.
        stages: `StageRow` s in the order the stages ran.
        extra: run-specific top-level keys (``counts``, ``outputs``, ``workers``, ``demo``, ...).
    """

    run_id: str
    kind: str
    started_at: str | None
    finished_at: str | None
    environment: dict[str, Any]
    config: dict[str, Any]
    stages: list[StageRow] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: str = RUN_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "run_id": self.run_id,
            "kind": self.kind,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "environment": self.environment,
            "config": self.config,
            "stages": [s.to_dict() for s in self.stages],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("virnucpro.run/"):
            raise InputError("not a run record: expected a JSON object with schema 'virnucpro.run/1'")
        header = ("schema", "run_id", "kind", "started_at", "finished_at", "environment", "config", "stages")
        stages = data.get("stages") or []
        if not isinstance(stages, list):
            raise InputError(f"run record {data.get('run_id')!r}: 'stages' must be a list")
        return cls(
            run_id=str(data.get("run_id") or ""),
            kind=str(data.get("kind") or "predict"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            environment=dict(data.get("environment") or {}),
            config=dict(data.get("config") or {}),
            stages=[StageRow.from_dict(s) for s in stages],
            extra={k: v for k, v in data.items() if k not in header},
            schema=str(data["schema"]),
        )


def write_run_record(path: str | Path, record: RunRecord) -> Path:
    """Write ``record`` as JSON, atomically (the one writer of run records)."""
    out = Path(path)
    atomic_write_text(out, json.dumps(record.to_dict(), indent=2, default=str))
    return out


def read_run_record(path: str | Path) -> RunRecord:
    """Read a ``run_record.json``; `InputError` naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the run record {path}: {exc}") from None
    try:
        return RunRecord.from_dict(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


__all__ = [
    "RUN_RECORD_FILE",
    "RUN_SCHEMA",
    "RunRecord",
    "StageRow",
    "read_run_record",
    "stage_row",
    "write_run_record",
]
