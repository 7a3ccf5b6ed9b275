"""A full disk or an unwritable file: one error line, exit 74, and every stage's outputs all or none.

The disk is "full" through ``RLIMIT_FSIZE`` (a write past the cap fails with ``EFBIG``, the same path
as ``ENOSPC``); unwritable files are immutable (``chattr +i``), which stops root too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import DEMO, assert_clean_error, entries, immutable, run_cli, run_python

from pipeline.classify.merge import HIGHESTSCORE_FILE, PREDICTIONS_FILE, SUMMARY_FILE, merge
from pipeline.classify.scoring import frame_ids, write_scores
from pipeline.prepare.shard import write_shards
from pipeline.prepare.stage import prepare

MERGED = (PREDICTIONS_FILE, HIGHESTSCORE_FILE, SUMMARY_FILE)
OUTPUTS = (*MERGED, "frame_scores.parquet", "run_record.json")
FILE_SYSTEM_ERROR = 74


def test_prepare_disk_full_is_one_error_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("prepare", str(DEMO), "-o", str(out), fsize=2048)
    assert_clean_error(proc, FILE_SYSTEM_ERROR)
    assert str(out) in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------- merge: three files together


@pytest.fixture
def merged(tmp_path: Path) -> dict:
    """A prepared run with merged outputs from one set of scores, and another set of scores."""
    run = tmp_path / "run"
    prepare(DEMO, run)
    ids = frame_ids(run)
    for name, seed in (("old.parquet", 1), ("new.parquet", 2)):
        p = np.random.default_rng(seed).random(len(ids), dtype=np.float32)
        write_scores(ids, np.stack([1 - p, p], axis=1), tmp_path / name)
    merge(tmp_path / "old.parquet", run, run)
    return {
        "run": run,
        "new": tmp_path / "new.parquet",
        "old": {n: (run / n).read_bytes() for n in MERGED},
        "entries": entries(run),
    }


def assert_merge_unchanged(merged: dict) -> None:
    assert {n: (merged["run"] / n).read_bytes() for n in MERGED} == merged["old"]
    assert entries(merged["run"]) == merged["entries"]


@pytest.mark.parametrize("name", MERGED)
def test_merge_with_an_immutable_output_changes_none(merged: dict, name: str) -> None:
    with immutable(merged["run"] / name):
        with pytest.raises(OSError):
            merge(merged["new"], merged["run"], merged["run"])
        assert_merge_unchanged(merged)


MERGE = """
import sys
from pipeline.classify.merge import merge
merge(sys.argv[1], sys.argv[2], sys.argv[2])
"""


def test_merge_disk_full_changes_none(merged: dict) -> None:
    biggest = max(len(data) for data in merged["old"].values())
    proc = run_python(MERGE, str(merged["new"]), str(merged["run"]), fsize=biggest // 2)
    assert proc.returncode != 0
    assert "File too large" in proc.stderr
    assert_merge_unchanged(merged)


def test_merge_of_scores_from_another_input_changes_none(merged: dict, tmp_path: Path) -> None:
    """Scores whose chunks are not in chunked.fa: refused before any file is written."""
    write_scores(["stranger_chunk_1F1"], np.array([[0.5, 0.5]], np.float32), tmp_path / "x.parquet")
    with pytest.raises(Exception, match="not in chunked.fa"):
        merge(tmp_path / "x.parquet", merged["run"], merged["run"])
    assert_merge_unchanged(merged)


# ---------------------------------------------------------------- shards: one split, all files


def test_resharding_with_an_immutable_shard_changes_none(tmp_path: Path) -> None:
    prepared = tmp_path / "p"
    prepare(DEMO, prepared)
    shards = tmp_path / "shards"
    write_shards(prepared, 3, shards)
    other = tmp_path / "q"
    shutil.copytree(prepared, other)
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    # a split of the same frames into 2 shards: every file differs from the 3-shard split
    with immutable(shards / "shard-001.parquet"):
        with pytest.raises(OSError):
            write_shards(other, 2, shards)
        assert {p.name: p.read_bytes() for p in shards.iterdir()} == before


def test_resharding_into_fewer_shards_leaves_no_stale_shard(tmp_path: Path) -> None:
    prepared = tmp_path / "p"
    prepare(DEMO, prepared)
    write_shards(prepared, 4, tmp_path / "shards")
    paths = write_shards(prepared, 2, tmp_path / "shards")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [p.name for p in paths]


# ---------------------------------------------------------------- predict under a file-size cap


@pytest.fixture(scope="module")
def clean_predict(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "out"
    proc = run_cli("predict", str(DEMO), "-o", str(out), "--demo")
    assert proc.returncode == 0, proc.stderr
    sizes = sorted({p.stat().st_size for p in out.rglob("*") if p.is_file()})
    return {"out": out, "sizes": sizes, "files": {n: (out / n).read_bytes() for n in MERGED}}


@pytest.mark.parametrize("which", ["smallest", "middle", "largest"])
def test_predict_disk_full_then_resume_gives_the_clean_outputs(
    clean_predict: dict, tmp_path: Path, which: str
) -> None:
    """The cap lies below the smallest, a middle and the largest file a clean run writes: the run
    stops with one error line (exit 74) wherever that is, and ``--resume`` with room again finishes
    with outputs identical to the clean run's."""
    sizes = [s for s in clean_predict["sizes"] if s > 200]
    cap = {"smallest": sizes[0], "middle": sizes[len(sizes) // 2], "largest": sizes[-1]}[which] - 1
    out = tmp_path / "out"
    proc = run_cli("predict", str(DEMO), "-o", str(out), "--demo", fsize=cap)
    assert_clean_error(proc, FILE_SYSTEM_ERROR)
    resumed = run_cli("predict", str(DEMO), "-o", str(out), "--demo", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert {n: (out / n).read_bytes() for n in MERGED} == clean_predict["files"]
