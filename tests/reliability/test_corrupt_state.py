"""Corrupt or mismatched state files in a finished run directory.

Readers refuse them with one error line naming the file (exit 8 for a damaged file the pipeline
wrote, 3 for a prepare that never finished), never with a traceback or, worse, a silent result
computed from a mix of runs; ``predict --resume`` rebuilds what it can rebuild and finishes with
the outputs of a clean run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from faults import DEMO, assert_clean_error, run_cli

from pipeline.classify.merge import HIGHESTSCORE_FILE, PREDICTIONS_FILE, SUMMARY_FILE
from pipeline.classify.scoring import frame_ids
from pipeline.core.errors import InputError, OutputIntegrityError
from pipeline.prepare.stage import MANIFEST

MERGED = (PREDICTIONS_FILE, HIGHESTSCORE_FILE, SUMMARY_FILE)
OTHER_INPUT = ">other\n" + "GCTGCAGCC" * 60 + "\n>more\n" + "ATGGCA" * 90 + "\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished demo predict run, another prepared run, and an empty metrics database."""
    from validation.metrics_store import MetricsStore

    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    proc = run_cli("predict", str(DEMO), "-o", str(run), "--demo")
    assert proc.returncode == 0, proc.stderr
    (root / "other.fa").write_text(OTHER_INPUT)
    assert run_cli("prepare", str(root / "other.fa"), "-o", str(root / "other")).returncode == 0
    with MetricsStore(root / "m.duckdb").connect():  # an empty, migrated store
        pass
    return {
        "run": run,
        "other": root / "other",
        "db": root / "m.duckdb",
        "clean": {n: (run / n).read_bytes() for n in MERGED},
    }


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def garbage_same_size(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8) + b"x" * (path.stat().st_size % 8))


CORRUPTIONS: dict[str, tuple[str, Callable[[Path, Path], None], int]] = {
    # name -> (file, corrupt(run, other prepared run), exit code of a reader)
    "record not JSON": (MANIFEST, lambda run, other: (run / MANIFEST).write_text("{not json"), 8),
    "record of another run": (
        MANIFEST,
        lambda run, other: shutil.copyfile(other / MANIFEST, run / MANIFEST),
        8,
    ),
    "record deleted": (MANIFEST, lambda run, other: (run / MANIFEST).unlink(), 3),
    "chunked.fa truncated": ("chunked.fa", lambda run, other: truncate(run / "chunked.fa"), 8),
    "chunked.fa of another run": (
        "chunked.fa",
        lambda run, other: shutil.copyfile(other / "chunked.fa", run / "chunked.fa"),
        8,
    ),
    "frame scores truncated": (
        "frame_scores.parquet",
        lambda run, other: truncate(run / "frame_scores.parquet"),
        8,
    ),
}


@pytest.fixture
def damaged(finished: dict, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str, int]:
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    name, corrupt, code = CORRUPTIONS[request.param]
    corrupt(run, finished["other"])
    return run, name, code


@pytest.mark.parametrize("damaged", list(CORRUPTIONS), indirect=True)
def test_report_on_a_damaged_run_is_one_error_line(
    finished: dict, damaged: tuple[Path, str, int], tmp_path: Path
) -> None:
    run, name, code = damaged
    proc = run_cli(
        "report", "--db", str(finished["db"]), "--run-dir", str(run), "-o", str(tmp_path / "r.html")
    )
    assert_clean_error(proc, code)
    assert name in proc.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("damaged", list(CORRUPTIONS), indirect=True)
def test_resume_rebuilds_a_damaged_run(finished: dict, damaged: tuple[Path, str, int]) -> None:
    run, _, _ = damaged
    proc = run_cli("predict", str(DEMO), "-o", str(run), "--demo", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n: (run / n).read_bytes() for n in MERGED} == finished["clean"]


@pytest.mark.parametrize("target", ["frames.parquet", "protein.faa", "nucleotide.fa"])
def test_same_size_garbage_in_a_prepared_file_is_refused(finished: dict, tmp_path: Path, target: str) -> None:
    """Sizes still match the record, so the readers' own parsing must catch it."""
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    garbage_same_size(run / target)
    if target == "frames.parquet":
        with pytest.raises(OutputIntegrityError, match="frames.parquet"):
            frame_ids(run)
    else:
        from pipeline.prepare.shard import write_shards

        with pytest.raises((InputError, OutputIntegrityError), match=target):
            write_shards(run, 1, tmp_path / "shards")
