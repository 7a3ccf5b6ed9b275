"""Hostile result documents: each one is refused whole (InputError, exit 3) and the metrics database
is left byte-for-byte unchanged; the database file itself is checked before DuckDB opens it, and
DuckDB never installs or loads an extension on its own."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.core.errors import ConfigError, InputError
from validation import samples
from validation.metrics_store import MetricsStore


def _edit(builder: Callable[[], dict], change: Callable[[dict], Any]) -> Callable[[], dict]:
    def make() -> dict:
        doc = copy.deepcopy(builder())
        change(doc)
        return doc

    return make


def _stage(**fields: Any) -> Callable[[dict], None]:
    return lambda d: d["stages"][1].update(fields)


def _result(**fields: Any) -> Callable[[dict], None]:
    return lambda d: d["results"][0].update(fields)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


RUN, VAL, BENCH, SCALE, DEV = (
    samples.run_record,
    samples.validate_doc,
    samples.pytest_benchmark_doc,
    samples.scaling_doc,
    samples.device_benchmark_doc,
)

HOSTILE: dict[str, Callable[[], dict]] = {
    "run stages is a number": _edit(RUN, lambda d: d.update(stages=5)),
    "run stages is a string": _edit(RUN, lambda d: d.update(stages="abc")),
    "run stage without a name": _edit(RUN, lambda d: d["stages"][1].pop("stage")),
    "run stage name is a number": _edit(RUN, _stage(stage=5)),
    "run tokens 1e30": _edit(RUN, _stage(tokens=1e30)),
    "run tokens a string": _edit(RUN, _stage(tokens="many")),
    "run tokens negative": _edit(RUN, _stage(tokens=-5)),
    "run seconds a string": _edit(RUN, _stage(seconds="fast")),
    "run started_at not a date": _edit(RUN, lambda d: d.update(started_at="not-a-date")),
    "run started_at impossible date": _edit(RUN, lambda d: d.update(started_at="2026-13-45T99:00:00+00:00")),
    "run finished_at a number": _edit(RUN, lambda d: d.update(finished_at=12345)),
    "run run_id an object": _edit(RUN, lambda d: d.update(run_id={"x": 1})),
    "run run_id empty": _edit(RUN, lambda d: d.update(run_id="")),
    "run environment a string": _edit(RUN, lambda d: d.update(environment="abc")),
    "run device_count a string": _edit(RUN, lambda d: d["environment"].update(device_count="many")),
    "run config nested 200 deep": _edit(RUN, lambda d: d.update(config={"x": _deep(200)})),
    "run unknown schema version": _edit(RUN, lambda d: d.update(schema="virnucpro.run/99")),
    "validate cosines a string": _edit(VAL, _result(cosines="abc")),
    "validate cosines mixed": _edit(VAL, _result(cosines=[1.0, "x", None])),
    "validate results a number": _edit(VAL, lambda d: d.update(results=7)),
    "validate cos_min a string": _edit(VAL, _result(cos_min="high")),
    "validate n 1e30": _edit(VAL, _result(n=1e30)),
    "validate passed a string": _edit(VAL, _result(passed="yes")),
    "validate second row bad": _edit(VAL, lambda d: d["results"][3].update(cos_mean={"a": 1})),
    "benchmark stats a string": _edit(BENCH, lambda d: d["benchmarks"][0].update(stats="fast")),
    "benchmark rounds 1e30": _edit(BENCH, lambda d: d["benchmarks"][0]["stats"].update(rounds=1e30)),
    "benchmark name a number": _edit(BENCH, lambda d: d["benchmarks"][0].update(name=5)),
    "scaling n_gpus a word": _edit(SCALE, lambda d: d["results"][0].update(n_gpus="eight")),
    "scaling tokens_per_s a word": _edit(SCALE, lambda d: d["results"][1].update(tokens_per_s="fast")),
    "device environment time a word": _edit(DEV, lambda d: d["environment"].update(time="yesterday")),
    "device run_id a list": _edit(DEV, lambda d: d.update(run_id=[1, 2])),
}


def _snapshot(store: MetricsStore) -> dict[str, int]:
    return store.row_counts()


@pytest.fixture
def seeded(tmp_path: Path) -> MetricsStore:
    store = MetricsStore(tmp_path / "m.duckdb")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(samples.run_record(day=3, run_id="seed")))
    store.ingest_file(good)
    return store


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_document_is_refused_whole(seeded, tmp_path, name):
    before = _snapshot(seeded)
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(HOSTILE[name]()))
    with pytest.raises(InputError) as info:
        seeded.ingest_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert _snapshot(seeded) == before


def test_very_deep_nesting_is_refused(seeded, tmp_path):
    before = _snapshot(seeded)
    path = tmp_path / "deep.json"
    path.write_text('{"schema": "virnucpro.run/1", "config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError):
        seeded.ingest_file(path)
    assert _snapshot(seeded) == before


def test_one_bad_file_among_several_changes_nothing(seeded, tmp_path, capsys):
    before = _snapshot(seeded)
    good = tmp_path / "good2.json"
    good.write_text(json.dumps(samples.run_record(day=4, run_id="second")))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(HOSTILE["validate cosines a string"]()))
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(good), str(bad), "--db", str(seeded.path)])
    err = capsys.readouterr().err
    assert info.value.code == 3, err
    assert "Traceback" not in err and str(bad) in err
    assert _snapshot(seeded) == before


def test_every_sample_kind_still_ingests(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    for path in samples.write_samples(tmp_path / "samples", days=(1,)):
        assert not store.ingest_file(path).skipped


# ---- the database file ----------------------------------------------------------------------------------


def test_sqlite_file_is_refused_before_duckdb_opens_it(tmp_path, capsys):
    db = tmp_path / "metrics.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE x (a)")
    con.commit()
    con.close()
    data = db.read_bytes()
    with pytest.raises(ConfigError, match="not a DuckDB database"):
        MetricsStore(db)
    record = tmp_path / "r.json"
    record.write_text(json.dumps(samples.run_record()))
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(record), "--db", str(db)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "not a DuckDB database" in err and "extension" not in err.lower()
    assert db.read_bytes() == data


@pytest.mark.parametrize("content", [b"", b"hello world, not a database", b"\x00" * 4096])
def test_other_non_duckdb_files_are_refused(tmp_path, content):
    db = tmp_path / "m.duckdb"
    db.write_bytes(content)
    with pytest.raises(ConfigError, match="not a DuckDB database"):
        MetricsStore(db)
    assert db.read_bytes() == content


def test_extension_autoload_and_autoinstall_are_off(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    with store.connect() as con:
        row = con.execute(
            "SELECT current_setting('autoinstall_known_extensions'), "
            "current_setting('autoload_known_extensions')"
        ).fetchone()
    assert row == (False, False)
