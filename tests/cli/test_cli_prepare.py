"""``virnucpro prepare``: exit codes, messages, and that a failed run leaves no output files."""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.fa"
OUTPUTS = {"chunked.fa", "nucleotide.fa", "protein.faa", "frames.parquet", "prepared.json"}


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def test_prepare_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_cli(["prepare", str(DEMO), "-o", str(out), "--chunk-size", "300"]) == 0
    assert {p.name for p in out.iterdir()} == OUTPUTS
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert "24 records" in summary[0] and "frames kept" in summary[0]
    assert ">demo_01_chunk_1\n" in (out / "chunked.fa").read_text()


BAD = {
    "empty": b"",
    "not_fasta": b"id\tvalue\nx\t1\n",
    "empty_sequence": b">a\nACGT\n>b\n>c\nACGT\n",
    "duplicate_id": b">a\nACGT\n>a\nACGT\n",
    "bad_character": b">a\nACGT\n>b\nACGTXACGT\n",
    "truncated_gzip": gzip.compress(b">a\n" + bytes(random.Random(0).choices(b"ACGT", k=20000)) + b"\n")[
        :3000
    ],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_without_outputs(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "input.fa"
    src.write_bytes(BAD[case])
    out = tmp_path / "out"
    assert run_cli(["prepare", str(src), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(src) in err
    assert not out.exists()


def test_bad_input_keeps_previous_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli(["prepare", str(DEMO), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    src = tmp_path / "bad.fa"
    src.write_text(">a\nACGT\n>a\nACGT\n")
    assert run_cli(["prepare", str(src), "-o", str(out)]) == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_chunk_size_is_a_usage_error(tmp_path: Path) -> None:
    assert run_cli(["prepare", str(DEMO), "-o", str(tmp_path / "out"), "--chunk-size", "2"]) == 2
    assert not (tmp_path / "out").exists()


def test_console_script_with_gzip_input(tmp_path: Path) -> None:
    exe = shutil.which("virnucpro", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the virnucpro console script is not installed in this environment")
    src = tmp_path / "demo.fasta"  # gzip content under a plain name: detected from the bytes
    src.write_bytes(gzip.compress(DEMO.read_bytes()))
    out = tmp_path / "out"
    done = subprocess.run(
        [exe, "prepare", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "VIRNUCPRO_PROGRESS": "0"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("prepared ")
    reference = tmp_path / "ref"
    assert run_cli(["prepare", str(DEMO), "-o", str(reference)]) == 0
    for name in ("chunked.fa", "nucleotide.fa", "protein.faa"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
