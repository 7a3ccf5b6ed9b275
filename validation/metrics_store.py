"""The DuckDB metrics store: one versioned schema and idempotent ingestion of every result file.

File types recognised by `detect_file_type` (the JSON's content decides, not its name):

- ``run``: run records, ``{"schema": "virnucpro.run/1", ...}`` (docs/INTERNALS.md) -> ``runs`` +
  ``stage_metrics``;
- ``validate``: ``virnucpro validate --json`` output, ``{"schema": "virnucpro.validate/1", ...}``
  -> ``runs`` + ``equivalence_results`` + ``cosine_values``;
- ``pytest-benchmark``: ``pytest benchmarks/ --benchmark-autosave|--benchmark-json`` files
  (``machine_info`` + ``benchmarks``) -> ``runs`` + ``benchmark_results``;
- ``scaling``: the multi-GPU scaling JSON (rows with ``n_gpus`` and ``tokens_per_s``) ->
  ``runs`` + ``scaling_results``;
- ``device-benchmark``: any other JSON object with an ``environment`` block (the
  ``benchmarks/gpu/*.py`` scripts) -> ``runs`` + ``device_benchmarks`` (its numeric metrics,
  flattened to dotted names).

Idempotency: the SHA-256 of a file's bytes is recorded in ``ingested_files``; a file already seen
is skipped. Every data table also has a natural primary key and rows are inserted with
``INSERT OR IGNORE``, so the same results arriving in a byte-different file add nothing either.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, InputError, OutputIntegrityError
from validation.metrics import LEGACY_KEYS

RUN_SCHEMA = "virnucpro.run/1"
VALIDATE_SCHEMA = "virnucpro.validate/1"
SCALING_SCHEMA = "virnucpro.scaling/1"
FILE_TYPES = ("run", "validate", "pytest-benchmark", "scaling", "device-benchmark")

# Each migration moves the schema from version N-1 to N. Statements are written so that replaying
# them is harmless; the version table records what has been applied. Never edit a released
# migration: append a new one.
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "initial schema",
        (
            """CREATE TABLE IF NOT EXISTS ingested_files (
            sha256 VARCHAR PRIMARY KEY,
            path VARCHAR,
            file_type VARCHAR NOT NULL,
            run_id VARCHAR,
            ingested_at TIMESTAMPTZ DEFAULT current_timestamp)""",
            """CREATE TABLE IF NOT EXISTS runs (
            run_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ,
            git_commit VARCHAR,
            host VARCHAR,
            device_name VARCHAR,
            device_count INTEGER,
            versions JSON,
            config JSON,
            environment JSON)""",
            """CREATE TABLE IF NOT EXISTS stage_metrics (
            run_id VARCHAR NOT NULL,
            idx INTEGER NOT NULL,
            stage VARCHAR NOT NULL,
            model VARCHAR,
            seconds DOUBLE,
            sequences BIGINT,
            tokens BIGINT,
            tokens_per_s DOUBLE,
            packing_efficiency DOUBLE,
            backend VARCHAR,
            precision VARCHAR,
            device VARCHAR,
            extra JSON,
            PRIMARY KEY (run_id, idx))""",
            """CREATE TABLE IF NOT EXISTS equivalence_results (
            run_id VARCHAR NOT NULL,
            comparison VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            precision VARCHAR NOT NULL,
            backend VARCHAR NOT NULL,
            n INTEGER,
            cos_min DOUBLE,
            cos_p001 DOUBLE,
            cos_mean DOUBLE,
            rel_l2_max DOUBLE,
            max_abs DOUBLE,
            label_agreement DOUBLE,
            chunk_label_agreement DOUBLE,
            passed BOOLEAN,
            extra JSON,
            PRIMARY KEY (run_id, comparison, model, precision, backend))""",
            """CREATE TABLE IF NOT EXISTS cosine_values (
            run_id VARCHAR NOT NULL,
            comparison VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            precision VARCHAR NOT NULL,
            backend VARCHAR NOT NULL,
            idx INTEGER NOT NULL,
            cosine DOUBLE,
            PRIMARY KEY (run_id, comparison, model, precision, backend, idx))""",
            """CREATE TABLE IF NOT EXISTS benchmark_results (
            run_id VARCHAR NOT NULL,
            fullname VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            "group" VARCHAR,
            min DOUBLE,
            max DOUBLE,
            median DOUBLE,
            mean DOUBLE,
            stddev DOUBLE,
            rounds BIGINT,
            ops DOUBLE,
            params JSON,
            extra_info JSON,
            machine_info JSON,
            commit_info JSON,
            PRIMARY KEY (run_id, fullname))""",
            """CREATE TABLE IF NOT EXISTS scaling_results (
            run_id VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            n_gpus INTEGER NOT NULL,
            tokens_per_s DOUBLE,
            speedup DOUBLE,
            efficiency DOUBLE,
            extra JSON,
            PRIMARY KEY (run_id, model, n_gpus))""",
            """CREATE TABLE IF NOT EXISTS device_benchmarks (
            run_id VARCHAR NOT NULL,
            benchmark VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            value DOUBLE,
            PRIMARY KEY (run_id, benchmark, metric))""",
        ),
    ),
    (
        2,
        "device benchmark metric cos_p0.1 renamed cos_p001 (validation.metrics.STAT_KEYS)",
        (
            r"""UPDATE device_benchmarks
            SET metric = regexp_replace(metric, '(^|\.)cos_p0\.1$', '\1cos_p001')
            WHERE regexp_matches(metric, '(^|\.)cos_p0\.1$')""",
        ),
    ),
    (
        3,
        "runner spot-check metrics min_cosine, max_abs_diff, rows_checked renamed cos_min, max_abs, n",
        (
            r"""UPDATE device_benchmarks
            SET metric = regexp_replace(metric, '(^|\.)min_cosine$', '\1cos_min')
            WHERE regexp_matches(metric, '(^|\.)min_cosine$')""",
            r"""UPDATE device_benchmarks
            SET metric = regexp_replace(metric, '(^|\.)max_abs_diff$', '\1max_abs')
            WHERE regexp_matches(metric, '(^|\.)max_abs_diff$')""",
            r"""UPDATE device_benchmarks
            SET metric = regexp_replace(metric, '(^|\.)rows_checked$', '\1n')
            WHERE regexp_matches(metric, '(^|\.)rows_checked$')""",
        ),
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]
DATA_TABLES = (
    "runs",
    "stage_metrics",
    "equivalence_results",
    "cosine_values",
    "benchmark_results",
    "scaling_results",
    "device_benchmarks",
    "ingested_files",
)


# Never fetch or load code behind the operator's back: a non-DuckDB file (a SQLite database, say)
# would otherwise make DuckDB download and load the matching extension.
DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
DUCKDB_MAGIC = b"DUCK"  # bytes 8..11 of every DuckDB database file
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_duckdb_file(path: Path) -> None:
    """Refuse an existing ``path`` that is not a DuckDB database, before DuckDB opens it.

    A path that does not exist yet is fine (the store creates it).
    """
    if path.is_dir():
        raise ConfigError(f"metrics database {path} is a directory; give a DuckDB file path")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return
    if head[8:12] != DUCKDB_MAGIC:
        kind = "a SQLite database" if head.startswith(_SQLITE_MAGIC) else "some other file"
        raise ConfigError(
            f"metrics database {path} is not a DuckDB database (it is {kind}); give a DuckDB file, or a "
            "path that does not exist yet to create one (--db / VIRNUCPRO_METRICS_DB)"
        )


@dataclass(frozen=True)
class IngestResult:
    """What one `MetricsStore.ingest_file` call did."""

    path: Path
    file_type: str
    run_id: str | None
    skipped: bool  # True when the same bytes were ingested before
    rows: int  # data rows inserted (0 when skipped)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def detect_file_type(doc: Any) -> str:
    """Decide which kind of result file a parsed JSON document is (one of `FILE_TYPES`).

    Raises:
        InputError: the document is none of the known kinds.
    """
    if not isinstance(doc, dict):
        raise InputError(f"expected a JSON object at the top level, got {type(doc).__name__}")
    schema = str(doc.get("schema", ""))
    if schema.startswith("virnucpro.run/"):
        return "run"
    if schema.startswith("virnucpro.validate/"):
        return "validate"
    if schema.startswith("virnucpro.scaling/"):
        return "scaling"
    if "machine_info" in doc and isinstance(doc.get("benchmarks"), list):
        return "pytest-benchmark"
    if _scaling_rows(doc):
        return "scaling"
    if isinstance(doc.get("environment"), dict):
        return "device-benchmark"
    raise InputError(
        f"unrecognised result file (top-level keys {sorted(doc)[:8]}); expected a run record "
        f"({RUN_SCHEMA!r}), validate JSON, pytest-benchmark JSON, scaling JSON or a device "
        "benchmark JSON with an 'environment' block"
    )


def _scaling_rows(doc: Mapping[str, Any]) -> list[dict]:
    for key in ("results", "rows", "scaling"):
        rows = doc.get(key)
        if (
            isinstance(rows, list)
            and rows
            and all(isinstance(r, dict) and "n_gpus" in r and "tokens_per_s" in r for r in rows)
        ):
            return rows
    return []


_ID_KEYS = ("name", "model", "kind", "mix", "path", "label", "config", "backend", "precision", "n_gpus")


def _item_label(item: Any, index: int) -> str:
    """A readable, stable name for one element of a result list: its identifying fields joined
    (``short_reads/packed-eager/sdpa/fp16``), or its index when it has none."""
    if isinstance(item, dict):
        parts = [
            str(item[k])
            for k in _ID_KEYS
            if isinstance(item.get(k), str | int) and not isinstance(item.get(k), bool)
        ]
        if parts:
            return "/".join(parts)
    return str(index)


def _flatten_metrics(value: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, float]]:
    """Numeric leaves of a JSON value as dotted names; list items are named by `_item_label`
    (made unique with ``#index`` when two items share a label)."""
    if depth > 5:
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            key = LEGACY_KEYS.get(key, key)  # GPU-script files written before one key set
            yield from _flatten_metrics(sub, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif isinstance(value, list):
        seen: set[str] = set()
        for i, sub in enumerate(value[:1000]):
            label = _item_label(sub, i)
            if label in seen:
                label = f"{label}#{i}"
            seen.add(label)
            yield from _flatten_metrics(sub, f"{prefix}[{label}]", depth + 1)
    else:
        number = _num(value)
        if number is not None and prefix:
            yield prefix, number


class MetricsStore:
    """A DuckDB metrics database (created and migrated on first use).

    Args:
        path: database file (parent directories are created); ``":memory:"`` for a throw-away store.

    Each call opens and closes its own connection, so several processes can take turns (DuckDB
    allows one writer at a time).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._memory_con = None
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    @contextmanager
    def connect(self, read_only: bool = False):
        """A DuckDB connection to the store (closed on exit), extension auto-install/auto-load off."""
        import duckdb

        if not isinstance(self.path, Path):
            if self._memory_con is None:
                self._memory_con = duckdb.connect(":memory:", config=dict(DUCKDB_CONFIG))
            yield self._memory_con
            return
        check_duckdb_file(self.path)
        try:
            con = duckdb.connect(str(self.path), read_only=read_only, config=dict(DUCKDB_CONFIG))
        except duckdb.Error as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            if "lock" in first.lower():
                raise ConfigError(
                    f"cannot open metrics database {self.path}: {first}; another process is writing it, "
                    "wait for it or give another --db / VIRNUCPRO_METRICS_DB"
                ) from None
            raise OutputIntegrityError(
                f"metrics database {self.path} is corrupt or truncated ({type(exc).__name__}); restore it "
                "from a backup, or move it aside and ingest the result files into a new one"
            ) from None
        try:
            yield con
        except (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException) as exc:
            raise OutputIntegrityError(
                f"metrics database {self.path} is corrupt or truncated ({type(exc).__name__}); restore it "
                "from a backup, or move it aside and ingest the result files into a new one"
            ) from None
        finally:
            con.close()

    # ---- schema -------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply pending migrations; safe to call any number of times. Returns the schema version."""
        with self.connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                "description VARCHAR, applied_at TIMESTAMPTZ DEFAULT current_timestamp)"
            )
            current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"metrics database {self.path} has schema version {current}, newer than this "
                    f"code's {SCHEMA_VERSION}; upgrade virnucpro or use another --db"
                )
            for version, description, statements in _MIGRATIONS:
                if version <= current:
                    continue
                con.execute("BEGIN TRANSACTION")
                try:
                    for stmt in statements:
                        con.execute(stmt)
                    con.execute(
                        "INSERT OR IGNORE INTO schema_version (version, description) VALUES (?, ?)",
                        [version, description],
                    )
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise
            return con.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    def schema_version(self) -> int:
        with self.connect() as con:
            return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]

    def row_counts(self) -> dict[str, int]:
        """Rows per data table (used by tests and ``virnucpro ingest`` output)."""
        with self.connect() as con:
            return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in DATA_TABLES}

    def query(self, sql: str, params: list | None = None):
        """Run a read query and return a pandas DataFrame."""
        with self.connect() as con:
            return con.execute(sql, params or []).df()

    # ---- ingestion ----------------------------------------------------------------------------
    def ingest_file(self, path: str | Path) -> IngestResult:
        """Ingest one result file (type detected from its content). Ingesting the same bytes
        again adds nothing and returns ``skipped=True``.

        Raises:
            InputError: the file is missing, not JSON, not a known result file, or breaks its
                schema (`validation.schemas`); the database is then unchanged.
        """
        return self.ingest_files([path])[0]

    def ingest_files(self, paths: Iterable[str | Path]) -> list[IngestResult]:
        """Ingest several files all or nothing: every file is read and validated first, then all
        are written in one transaction, so one bad file leaves the database unchanged."""
        loaded = [_load_result_file(Path(p)) for p in paths]
        import duckdb

        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                results = []
                for path, data, doc, file_type in loaded:
                    try:
                        results.append(self._ingest_doc(con, path, data, doc, file_type))
                    except duckdb.Error as exc:  # a value the schema let through but the column refuses
                        raise InputError(
                            f"{path}: a value does not fit the metrics database ({type(exc).__name__}); "
                            "nothing was stored; fix the file and ingest it again"
                        ) from None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return results

    def _ingest_doc(self, con, path: Path, data: bytes, doc: Any, file_type: str) -> IngestResult:
        digest = _sha256(data)
        seen = con.execute(
            "SELECT file_type, run_id FROM ingested_files WHERE sha256 = ?", [digest]
        ).fetchone()
        if seen is not None:
            return IngestResult(path, seen[0], seen[1], skipped=True, rows=0)
        before = self._total_rows(con)
        # Fallback run ids hash the parsed content, so re-serialising a file keeps its id.
        content_id = _sha256(json.dumps(doc, sort_keys=True).encode())
        run_id = _INGESTERS[file_type](con, doc, content_id)
        con.execute(
            "INSERT INTO ingested_files (sha256, path, file_type, run_id) VALUES (?, ?, ?, ?)",
            [digest, str(path), file_type, run_id],
        )
        return IngestResult(path, file_type, run_id, skipped=False, rows=self._total_rows(con) - before)

    @staticmethod
    def _total_rows(con) -> int:
        return sum(
            con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            for t in DATA_TABLES
            if t != "ingested_files"
        )


def _load_result_file(path: Path) -> tuple[Path, bytes, Any, str]:
    """Read, parse, detect and schema-check one result file: ``(path, bytes, document, file type)``."""
    from validation.schemas import schema_problem

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}; check the path") from exc
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); give a result JSON file") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply; give a result JSON file") from None
    try:
        file_type = detect_file_type(doc)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    problem = schema_problem(doc, file_type)
    if problem is not None:
        raise InputError(
            f"{path}: not a valid {file_type} result file ({problem}); nothing was stored; fix or "
            "regenerate the file"
        )
    return path, data, doc, file_type


# ---- per-type ingesters: (connection, parsed document, content sha256) -> run_id ----------------------


def _insert_run(
    con,
    *,
    run_id: str,
    kind: str,
    source: str,
    started_at: Any,
    finished_at: Any,
    environment: Mapping[str, Any] | None,
    config: Any,
) -> None:
    env = dict(environment or {})
    con.execute(
        "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, CAST(? AS TIMESTAMPTZ), CAST(? AS TIMESTAMPTZ), "
        "?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            kind,
            source,
            started_at or env.get("time"),
            finished_at,
            env.get("git_commit"),
            env.get("host"),
            env.get("device_name"),
            int(env["device_count"]) if _num(env.get("device_count")) is not None else None,
            _json(env.get("versions")),
            _json(config),
            _json(env),
        ],
    )


def _bulk_insert(con, table: str, columns: Mapping[str, Any]) -> None:
    """Insert many rows at once through a pandas frame (``executemany`` is slow in DuckDB);
    scalar values are broadcast, column order must match the table's."""
    import pandas as pd

    frame = pd.DataFrame(columns)
    con.register("_bulk_rows", frame)
    try:
        con.execute(f'INSERT OR IGNORE INTO "{table}" SELECT * FROM _bulk_rows')
    finally:
        con.unregister("_bulk_rows")


def _ingest_run(con, doc: Mapping[str, Any], digest: str) -> str:
    run_id = str(doc.get("run_id") or f"run-{digest[:12]}")
    _insert_run(
        con,
        run_id=run_id,
        kind=str(doc.get("kind") or "predict"),
        source="run",
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        environment=doc.get("environment"),
        config=doc.get("config"),
    )
    known = {
        "stage",
        "model",
        "seconds",
        "sequences",
        "tokens",
        "tokens_per_s",
        "packing_efficiency",
        "backend",
        "precision",
        "device",
    }
    for idx, st in enumerate(doc.get("stages") or []):
        if not isinstance(st, dict) or "stage" not in st:
            raise InputError(f"run record {run_id}: stage entry {idx} has no 'stage' name: {st!r}")
        extra = {k: v for k, v in st.items() if k not in known}
        seq, tok = _num(st.get("sequences")), _num(st.get("tokens"))
        con.execute(
            "INSERT OR IGNORE INTO stage_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                idx,
                str(st["stage"]),
                st.get("model"),
                _num(st.get("seconds")),
                None if seq is None else int(seq),
                None if tok is None else int(tok),
                _num(st.get("tokens_per_s")),
                _num(st.get("packing_efficiency")),
                st.get("backend"),
                st.get("precision"),
                st.get("device"),
                _json(extra or None),
            ],
        )
    return run_id


_EQUIV_COLUMNS = (
    "n",
    "cos_min",
    "cos_p001",
    "cos_mean",
    "rel_l2_max",
    "max_abs",
    "label_agreement",
    "chunk_label_agreement",
)


def _ingest_validate(con, doc: Mapping[str, Any], digest: str) -> str:
    run_id = str(doc.get("run_id") or f"validate-{digest[:12]}")
    _insert_run(
        con,
        run_id=run_id,
        kind="validate",
        source="validate",
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        environment=doc.get("environment"),
        config={"config": doc.get("config"), "thresholds": doc.get("thresholds")},
    )
    for row in doc.get("results") or []:
        key = [
            run_id,
            str(row.get("comparison", "")),
            str(row.get("model", "")),
            str(row.get("precision", "")),
            str(row.get("backend", "")),
        ]
        extra = {
            k: v
            for k, v in row.items()
            if k not in {*_EQUIV_COLUMNS, "comparison", "model", "precision", "backend", "passed", "cosines"}
        }
        values = [_num(row.get(c)) for c in _EQUIV_COLUMNS]
        values[0] = None if values[0] is None else int(values[0])
        con.execute(
            "INSERT OR IGNORE INTO equivalence_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*key, *values, bool(row.get("passed")), _json(extra or None)],
        )
        cosines = row.get("cosines") or []
        if cosines:
            _bulk_insert(
                con,
                "cosine_values",
                {
                    "run_id": key[0],
                    "comparison": key[1],
                    "model": key[2],
                    "precision": key[3],
                    "backend": key[4],
                    "idx": list(range(len(cosines))),
                    "cosine": [_num(c) for c in cosines],
                },
            )
    return run_id


def _ingest_pytest_benchmark(con, doc: Mapping[str, Any], digest: str) -> str:
    commit = doc.get("commit_info") or {}
    machine = doc.get("machine_info") or {}
    # pytest-benchmark records no run id; its timestamp (microseconds) + host + commit name the run.
    stamp = doc.get("datetime") or digest[:12]
    run_id = f"bench-{stamp}-{machine.get('node', '')}-{str(commit.get('id', ''))[:8]}"
    cpu = machine.get("cpu") or {}
    env = {
        "host": machine.get("node"),
        "git_commit": commit.get("id"),
        "device_name": cpu.get("brand_raw") if isinstance(cpu, dict) else None,
        "device_count": 0,
        "versions": {"python": machine.get("python_version")},
        "machine_info": machine,
        "commit_info": commit,
    }
    _insert_run(
        con,
        run_id=run_id,
        kind="bench",
        source="pytest-benchmark",
        started_at=doc.get("datetime"),
        finished_at=None,
        environment=env,
        config=None,
    )
    for bench in doc.get("benchmarks") or []:
        stats = bench.get("stats") or {}
        con.execute(
            "INSERT OR IGNORE INTO benchmark_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                bench.get("fullname") or bench.get("name"),
                bench.get("name"),
                bench.get("group"),
                _num(stats.get("min")),
                _num(stats.get("max")),
                _num(stats.get("median")),
                _num(stats.get("mean")),
                _num(stats.get("stddev")),
                int(stats["rounds"]) if _num(stats.get("rounds")) is not None else None,
                _num(stats.get("ops")),
                _json(bench.get("params")),
                _json(bench.get("extra_info")),
                _json(machine),
                _json(commit),
            ],
        )
    return run_id


def _ingest_scaling(con, doc: Mapping[str, Any], digest: str) -> str:
    run_id = str(doc.get("run_id") or f"scaling-{digest[:12]}")
    env = doc.get("environment") or {}
    _insert_run(
        con,
        run_id=run_id,
        kind="scaling",
        source="scaling",
        started_at=doc.get("started_at") or env.get("time"),
        finished_at=doc.get("finished_at"),
        environment=env,
        config=doc.get("config"),
    )
    rows = _scaling_rows(doc)
    base: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: _num(r.get("n_gpus")) or 0):
        model = str(row.get("model") or doc.get("model") or "")
        n = int(_num(row.get("n_gpus")) or 0)
        tps = _num(row.get("tokens_per_s"))
        if model not in base and tps and n:
            base[model] = tps / n
        speedup = _num(row.get("speedup"))
        if speedup is None and tps is not None and base.get(model):
            speedup = tps / base[model]
        efficiency = _num(row.get("efficiency"))
        if efficiency is None and speedup is not None and n:
            efficiency = speedup / n
        extra = {
            k: v
            for k, v in row.items()
            if k not in {"model", "n_gpus", "tokens_per_s", "speedup", "efficiency"}
        }
        con.execute(
            "INSERT OR IGNORE INTO scaling_results VALUES (?, ?, ?, ?, ?, ?, ?)",
            [run_id, model, n, tps, speedup, efficiency, _json(extra or None)],
        )
    return run_id


def _ingest_device_benchmark(con, doc: Mapping[str, Any], digest: str) -> str:
    env = doc.get("environment") or {}
    benchmark = str(
        doc.get("benchmark")
        or doc.get("name")
        or doc.get("script")
        or doc.get("schema")
        or "device-benchmark"
    )
    run_id = str(doc.get("run_id") or f"device-{benchmark}-{digest[:12]}")
    _insert_run(
        con,
        run_id=run_id,
        kind="device-bench",
        source="device-benchmark",
        started_at=doc.get("started_at") or env.get("time"),
        finished_at=doc.get("finished_at"),
        environment=env,
        config=doc.get("config") or doc.get("args"),
    )
    metrics = {k: v for k, v in doc.items() if k not in {"environment", "config", "args", "schema", "run_id"}}
    rows = list(_flatten_metrics(metrics))
    if rows:
        _bulk_insert(
            con,
            "device_benchmarks",
            {
                "run_id": run_id,
                "benchmark": benchmark,
                "metric": [n for n, _ in rows],
                "value": [v for _, v in rows],
            },
        )
    return run_id


_INGESTERS = {
    "run": _ingest_run,
    "validate": _ingest_validate,
    "pytest-benchmark": _ingest_pytest_benchmark,
    "scaling": _ingest_scaling,
    "device-benchmark": _ingest_device_benchmark,
}
