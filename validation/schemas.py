"""JSON Schemas of the result files the metrics store ingests (one per kind of `detect_file_type`).

A document is validated whole before anything is written: a wrong type, a count that does not fit
a BIGINT, a date that is not ISO 8601 or an unknown schema version refuses the file (`InputError`,
exit 3) instead of storing NULLs or failing half-way. The schemas type what the store reads and
leave every other key free (``additionalProperties`` stays open), so new fields in a result file
need no change here. Nesting deeper than `MAX_DEPTH` is refused before validation.
"""

from __future__ import annotations

from typing import Any

#: Deepest nesting of arrays/objects accepted in a result file (real files stay below 10).
MAX_DEPTH = 64
#: Counts are stored as BIGINT.
MAX_COUNT = 2**63 - 1
#: ISO 8601 date-time as written by ``datetime.isoformat`` (a space for the ``T`` is accepted).
ISO_DATETIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"

_NUMBER = {"type": ["number", "null"]}
_COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_COUNT}
_TEXT = {"type": ["string", "null"], "maxLength": 10_000}
_NAME = {"type": "string", "minLength": 1, "maxLength": 500}
_TIME = {"type": ["string", "null"], "pattern": ISO_DATETIME}
_OBJECT = {"type": ["object", "null"]}

ENVIRONMENT = {
    "type": ["object", "null"],
    "properties": {
        "host": _TEXT,
        "git_commit": _TEXT,
        "device_name": _TEXT,
        "device_count": _COUNT,
        "time": _TIME,
        "versions": _OBJECT,
    },
}

_RUN_ID = {"type": ["string", "null"], "minLength": 1, "maxLength": 500}

RUN = {
    "type": "object",
    "required": ["schema"],
    "properties": {
        "schema": {"const": "virnucpro.run/1"},
        "run_id": _RUN_ID,
        "kind": _TEXT,
        "started_at": _TIME,
        "finished_at": _TIME,
        "environment": ENVIRONMENT,
        "config": _OBJECT,
        "stages": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["stage"],
                "properties": {
                    "stage": _NAME,
                    "model": _TEXT,
                    "seconds": _NUMBER,
                    "sequences": _COUNT,
                    "tokens": _COUNT,
                    "tokens_per_s": _NUMBER,
                    "packing_efficiency": _NUMBER,
                    "backend": _TEXT,
                    "precision": _TEXT,
                    "device": _TEXT,
                },
            },
        },
    },
}

VALIDATE = {
    "type": "object",
    "required": ["schema"],
    "properties": {
        "schema": {"const": "virnucpro.validate/1"},
        "run_id": _RUN_ID,
        "started_at": _TIME,
        "finished_at": _TIME,
        "environment": ENVIRONMENT,
        "config": _OBJECT,
        "thresholds": _OBJECT,
        "results": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "properties": {
                    "comparison": _TEXT,
                    "model": _TEXT,
                    "precision": _TEXT,
                    "backend": _TEXT,
                    "n": _COUNT,
                    "cos_min": _NUMBER,
                    "cos_p001": _NUMBER,
                    "cos_mean": _NUMBER,
                    "rel_l2_max": _NUMBER,
                    "max_abs": _NUMBER,
                    "label_agreement": _NUMBER,
                    "chunk_label_agreement": _NUMBER,
                    "passed": {"type": ["boolean", "null"]},
                    "cosines": {"type": ["array", "null"], "items": _NUMBER},
                },
            },
        },
    },
}

PYTEST_BENCHMARK = {
    "type": "object",
    "required": ["machine_info", "benchmarks"],
    "properties": {
        "machine_info": {
            "type": "object",
            "properties": {
                "node": _TEXT,
                "python_version": _TEXT,
                "cpu": {"type": ["object", "string", "null"]},
            },
        },
        "commit_info": {"type": ["object", "null"], "properties": {"id": _TEXT}},
        "datetime": _TIME,
        "benchmarks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": _NAME,
                    "fullname": _TEXT,
                    "group": _TEXT,
                    "params": _OBJECT,
                    "extra_info": _OBJECT,
                    "stats": {
                        "type": ["object", "null"],
                        "properties": {
                            **{key: _NUMBER for key in ("min", "max", "median", "mean", "stddev", "ops")},
                            "rounds": _COUNT,
                        },
                    },
                },
            },
        },
    },
}

_SCALING_ROW = {
    "type": "object",
    "required": ["n_gpus", "tokens_per_s"],
    "properties": {
        "model": _TEXT,
        "n_gpus": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
        "tokens_per_s": _NUMBER,
        "speedup": _NUMBER,
        "efficiency": _NUMBER,
    },
}

SCALING = {
    "type": "object",
    "properties": {
        "schema": {"type": "string", "pattern": r"^virnucpro\.scaling/1$"},
        "run_id": _RUN_ID,
        "model": _TEXT,
        "started_at": _TIME,
        "finished_at": _TIME,
        "environment": ENVIRONMENT,
        "config": _OBJECT,
        **{key: {"type": ["array", "null"], "items": _SCALING_ROW} for key in ("results", "rows", "scaling")},
    },
}

DEVICE_BENCHMARK = {
    "type": "object",
    "required": ["environment"],
    "properties": {
        "run_id": _RUN_ID,
        "benchmark": _TEXT,
        "name": _TEXT,
        "script": _TEXT,
        "started_at": _TIME,
        "finished_at": _TIME,
        "environment": {**ENVIRONMENT, "type": "object"},
        "config": _OBJECT,
        "args": _OBJECT,
    },
}

#: file type (`validation.metrics_store.FILE_TYPES`) -> its JSON Schema
SCHEMAS: dict[str, dict[str, Any]] = {
    "run": RUN,
    "validate": VALIDATE,
    "pytest-benchmark": PYTEST_BENCHMARK,
    "scaling": SCALING,
    "device-benchmark": DEVICE_BENCHMARK,
}


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Depth of nested arrays/objects in ``value`` (iterative; stops counting past ``limit``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def schema_problem(doc: Any, file_type: str) -> str | None:
    """The first way ``doc`` breaks the schema of ``file_type`` (path and reason), or None."""
    import jsonschema

    depth = nesting_depth(doc)
    if depth > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH} levels"
    validator = jsonschema.Draft202012Validator(SCHEMAS[file_type])
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    expected = error.schema.get("type") if isinstance(error.schema, dict) else None
    reason = {
        "type": f"expected {expected}",
        "maximum": "number too large",
        "minimum": "number too small",
        "pattern": "not an ISO 8601 date-time"
        if error.schema.get("pattern") == ISO_DATETIME
        else "bad format",
        "const": "unsupported schema version",
        "required": error.message,
        "minLength": "empty",
        "maxLength": "too long",
    }.get(str(error.validator), str(error.validator))
    # the offending value is not echoed: it comes from the file and may be anything
    return f"{where}: {reason}"


__all__ = ["MAX_DEPTH", "SCHEMAS", "nesting_depth", "schema_problem"]
