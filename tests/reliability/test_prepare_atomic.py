"""prepare publishes all of its outputs or none, whatever fails and wherever it fails.

The invariant checked everywhere: after a failed or killed prepare into a directory that held a
finished prepare, that directory holds exactly the earlier files (byte for byte, nothing else), or
the readers refuse it; they never read a mix of two runs.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest
from faults import DEMO, entries, immutable, run_cli, run_python

from pipeline.classify.merge import chunk_ids
from pipeline.classify.scoring import frame_ids
from pipeline.core.errors import InputError, OutputIntegrityError
from pipeline.prepare.shard import write_shards
from pipeline.prepare.stage import (
    CHUNKED_FA,
    FRAMES_PARQUET,
    NUCLEOTIDE_FA,
    PROTEIN_FAA,
    PreparedPaths,
    prepare,
)

FILES = (CHUNKED_FA, NUCLEOTIDE_FA, PROTEIN_FAA, FRAMES_PARQUET)
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in {"TAA", "TAG", "TGA"}]


def orf_fasta(path: Path, records: int = 60, seed: int = 7) -> Path:
    """Records built from sense codons (frames kept on the forward strand) mixed with random ones."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(records):
            n = rng.randint(70, 400)
            seq = (
                "".join(rng.choice(SENSE) for _ in range(n))
                if i % 2
                else "".join(rng.choices("ACGT", k=3 * n))
            )
            fh.write(f">new{i}\n{seq}\n")
    return path


def reader_view(root: Path) -> dict[str, bytes] | None:
    """The prepared files as the pipeline's readers accept them, or None when they refuse."""
    try:
        PreparedPaths.locate(root)
        frame_ids(root)
        chunk_ids(root)
    except (InputError, OutputIntegrityError):
        return None
    return {name: (root / name).read_bytes() for name in FILES}


def published(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in FILES if (root / name).is_file()}


@pytest.fixture
def runs(tmp_path: Path) -> dict:
    """An output directory holding a finished prepare of the demo, and the files a prepare of
    another input gives (prepared elsewhere)."""
    new_input = orf_fasta(tmp_path / "new.fa")
    reference = tmp_path / "reference"
    prepare(new_input, reference)
    out = tmp_path / "out"
    prepare(DEMO, out)
    return {
        "out": out,
        "input": new_input,
        "old": published(out),
        "old_entries": entries(out),
        "new": published(reference),
        "new_entries": entries(reference),
    }


def assert_old_state(runs: dict) -> None:
    out = runs["out"]
    assert published(out) == runs["old"], "the earlier prepare was changed"
    assert entries(out) == runs["old_entries"], "temporary files were left behind"
    assert reader_view(out) == runs["old"]


# ---------------------------------------------------------------- disk full (RLIMIT_FSIZE)


@pytest.mark.parametrize("failing", [1, 2, 3, 4])
def test_disk_full_keeps_the_earlier_prepare(runs: dict, failing: int) -> None:
    """The cap lies just below the ``failing`` largest new files: they fail, the others fit."""
    sizes = sorted(len(data) for data in runs["new"].values())
    cap = sizes[-failing] - 1
    proc = run_cli("prepare", str(runs["input"]), "-o", str(runs["out"]), fsize=cap)
    assert proc.returncode != 0, proc.stderr
    assert_old_state(runs)
    # nothing stale blocks the next run once there is room again
    prepare(runs["input"], runs["out"])
    assert published(runs["out"]) == runs["new"]
    assert reader_view(runs["out"]) == runs["new"]


def test_disk_full_into_a_new_directory_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    proc = run_cli("prepare", str(DEMO), "-o", str(out), fsize=4096)
    assert proc.returncode != 0
    assert not out.exists()


# ---------------------------------------------------------------- a rename that fails mid-publish


@pytest.mark.parametrize("failing_call", range(12))
def test_failed_rename_at_any_step_is_all_or_nothing(
    runs: dict, failing_call: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.replace`` fails (as on an immutable or read-only target) at its n-th call: afterwards
    the directory holds the earlier prepare or the new one, complete, and nothing else."""
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] - 1 == failing_call:
            raise PermissionError(errno.EPERM, "Operation not permitted (injected)", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    try:
        prepare(runs["input"], runs["out"])
    except PermissionError:
        monkeypatch.undo()
        assert_old_state(runs)
    else:
        monkeypatch.undo()
        assert published(runs["out"]) == runs["new"]
        assert reader_view(runs["out"]) == runs["new"]
        assert entries(runs["out"]) == runs["new_entries"]


# ---------------------------------------------------------------- killed mid-publish (SIGKILL)

KILL_AT_REPLACE = """
import os, signal, sys
from pipeline.prepare.stage import prepare
real_replace, calls = os.replace, [0]
def replace(src, dst, *a, **k):
    if calls[0] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    calls[0] += 1
    return real_replace(src, dst, *a, **k)
os.replace = replace
prepare(sys.argv[1], sys.argv[2])
"""


# the n-th os.replace: 0 records the manifest in staging, 1 moves the old one aside, then each file
# is moved aside and replaced (2-9), 10 publishes the manifest
@pytest.mark.parametrize("kill_at", [0, 1, 2, 5, 9, 10])
def test_sigkill_between_renames_is_never_read_as_mixed(runs: dict, kill_at: int) -> None:
    proc = run_python(KILL_AT_REPLACE, str(runs["input"]), str(runs["out"]), str(kill_at))
    assert proc.returncode in (0, -9), proc.stderr
    view = reader_view(runs["out"])
    assert view in (None, runs["old"], runs["new"]), "readers accepted a mix of two prepare runs"
    prepare(runs["input"], runs["out"])  # the rerun recovers and cleans up after the killed one
    assert reader_view(runs["out"]) == runs["new"]
    assert entries(runs["out"]) == runs["new_entries"]


# ---------------------------------------------------------------- SIGTERM in the middle of the input

TERM_AT_RECORD = """
import os, signal, sys
import pipeline.prepare.stage as stage
real = stage.read_fasta_bytes
def reader(path):
    for i, item in enumerate(real(path)):
        if i == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGTERM)
        yield item
stage.read_fasta_bytes = reader
from pipeline.cli import main
main(["prepare", sys.argv[1], "-o", sys.argv[2]])
"""


@pytest.mark.parametrize("record", [0, 30, 59])
def test_sigterm_during_prepare_keeps_the_earlier_prepare(runs: dict, record: int) -> None:
    proc = run_python(TERM_AT_RECORD, str(runs["input"]), str(runs["out"]), str(record))
    assert proc.returncode != 0
    assert published(runs["out"]) == runs["old"]
    assert reader_view(runs["out"]) == runs["old"]
    prepare(runs["input"], runs["out"])
    assert reader_view(runs["out"]) == runs["new"]
    assert entries(runs["out"]) == runs["new_entries"]


# ---------------------------------------------------------------- immutable files and directories


@pytest.mark.parametrize("name", FILES)
def test_immutable_output_file_keeps_the_earlier_prepare(runs: dict, name: str) -> None:
    with immutable(runs["out"] / name):
        with pytest.raises(OSError):
            prepare(runs["input"], runs["out"])
        assert_old_state(runs)


def test_immutable_output_directory_keeps_the_earlier_prepare(runs: dict) -> None:
    with immutable(runs["out"]):
        with pytest.raises(OSError):
            prepare(runs["input"], runs["out"])
        assert_old_state(runs)


# ---------------------------------------------------------------- readers refuse what prepare did not publish


def test_readers_refuse_files_from_two_runs(runs: dict, tmp_path: Path) -> None:
    shutil.copyfile(tmp_path / "reference" / PROTEIN_FAA, runs["out"] / PROTEIN_FAA)
    for read in (PreparedPaths.locate, frame_ids, chunk_ids):
        with pytest.raises(OutputIntegrityError, match=PROTEIN_FAA):
            read(runs["out"])
    with pytest.raises(OutputIntegrityError, match=PROTEIN_FAA):
        write_shards(runs["out"], 1, tmp_path / "shards")


def test_readers_refuse_a_directory_prepare_did_not_finish(runs: dict, tmp_path: Path) -> None:
    """Files without the completion record (what a crash between the renames leaves)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in FILES:
        shutil.copyfile(runs["out"] / name, bare / name)
    for read in (PreparedPaths.locate, frame_ids, chunk_ids):
        with pytest.raises(InputError, match="did not finish"):
            read(bare)
    with pytest.raises(InputError, match="did not finish"):
        write_shards(bare, 1, tmp_path / "shards")


def test_readers_refuse_a_truncated_file(runs: dict) -> None:
    frames = runs["out"] / FRAMES_PARQUET
    frames.write_bytes(frames.read_bytes()[:100])
    with pytest.raises(OutputIntegrityError, match=FRAMES_PARQUET):
        frame_ids(runs["out"])
