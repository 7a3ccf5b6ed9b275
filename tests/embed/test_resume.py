"""Kill / SIGTERM / corruption / mismatch: resumed outputs equal an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import EmbedConfig, EncoderConfig
from pipeline.core.errors import ConfigError, OutputIntegrityError, ResumeMismatchError
from pipeline.embed.parts import PartFiles, check_part, open_embeddings, read_metadata
from pipeline.embed.runner import embed_shard

ESM = "random:esm2_t6_8M_UR50D"
AA = "ACDEFGHIKLMNPQRSTVWY"
N_SEQS, PART_SIZE = 24, 4  # 6 parts
ROOT = Path(__file__).resolve().parents[2]

# Runs the real CLI in a child process that stops at a known point: once GATE parts are on disk, the
# part writer creates GATE_DIR/reached and waits for GATE_DIR/go; the embedding loop stalls behind it
# with parts still to do. The parent waits for "reached", then acts (SIGKILL, or SIGTERM then "go"),
# with no sleeps that assume how fast the child runs.
RUNNER = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import pipeline.embed.runner as embed
gate, gate_dir, out = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
_write_part = embed.write_part
def gated_write_part(*args, **kwargs):
    marker = _write_part(*args, **kwargs)
    if not (gate_dir / "reached").exists() and len(list(out.glob("part-*.done"))) >= gate:
        (gate_dir / "reached").touch()
        while not (gate_dir / "go").exists():
            time.sleep(0.005)
    return marker
embed.write_part = gated_write_part
from pipeline.cli import main
main(sys.argv[4:])
"""


def proteins(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(AA), int(rng.integers(10, 50)))) for _ in range(n)]


def write_shard(path: Path, seqs: list[str]) -> Path:
    pd.DataFrame(
        {
            "id": [f"r{i}_F{1 + i % 3}" for i in range(len(seqs))],
            "nucleotide": ["ACG" * len(s) for s in seqs],
            "protein": seqs,
        }
    ).to_parquet(path, index=False)
    return path


def cfg(resume: bool = False, **enc) -> EmbedConfig:
    enc.setdefault("model", ESM)
    return EmbedConfig(
        encoder=EncoderConfig(**enc),
        device="cpu",
        token_budget=96,
        num_workers=0,
        part_size=PART_SIZE,
        resume=resume,
        progress=False,
    )


@pytest.fixture(scope="module")
def encoder():
    """One loaded tiny model shared by the in-process runs (what load_encoder returns for ESM)."""
    import torch

    from pipeline.models.registry import load_encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_encoder("esm2", EncoderConfig(ESM), "cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, encoder) -> tuple[Path, Path]:
    """A shard and its uninterrupted output directory."""
    root = tmp_path_factory.mktemp("ref")
    shard = write_shard(root / "shard-000.parquet", proteins(N_SEQS))
    embed_shard(shard, None, "esm2", cfg(), root / "out")
    return shard, root / "out"


def run(shard: Path, out: Path, config: EmbedConfig, encoder) -> dict:
    return embed_shard(shard, None, "esm2", config, out, encoder=encoder)


def assert_same(out: Path, ref: Path) -> None:
    a, b = open_embeddings(out), open_embeddings(ref)
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), rtol=1e-4, atol=1e-5)


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file's bytes and every entry's mtime under ``root`` (directories too: an entry created
    and removed again, such as a temporary file, changes its directory's mtime)."""
    entries = {".": (None, root.stat().st_mtime_ns)}
    for path in sorted(root.rglob("*")):
        content = path.read_bytes() if path.is_file() else None
        entries[str(path.relative_to(root))] = (content, path.stat().st_mtime_ns)
    return entries


def changed(before: dict[str, tuple[bytes | None, int]], root: Path) -> list[str]:
    """Entries of ``root`` added, removed, rewritten or touched since ``before = snapshot(root)``."""
    after = snapshot(root)
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def markers(out: Path) -> int:
    return len(list(out.glob("part-*.done"))) if out.exists() else 0


def start_child(shard: Path, out: Path, gate: int, gate_dir: Path, resume: bool = False) -> subprocess.Popen:
    """The CLI embedding ``shard`` into ``out``, parked once ``gate`` parts are written (see RUNNER)."""
    gate_dir.mkdir(parents=True)
    args = [
        "embed",
        str(shard),
        "--kind",
        "esm2",
        "--model",
        ESM,
        "-o",
        str(out),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--token-budget",
        "96",
        "--part-size",
        str(PART_SIZE),
        "--num-workers",
        "0",
    ]
    args += ["--resume"] if resume else []
    env = {**os.environ, "VIRNUCPRO_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(gate), str(gate_dir), str(out), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_parked(child: subprocess.Popen, gate_dir: Path, timeout: float = 120.0) -> None:
    """Wait for the file the child writes at the point of interest (it then waits for "go")."""
    deadline = time.monotonic() + timeout
    while not (gate_dir / "reached").exists():
        if child.poll() is not None:
            raise AssertionError(f"child exited early ({child.returncode}): {child.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("timed out waiting for the child to reach the gate")
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_after_two_parts_then_resume_equals_uninterrupted(tmp_path: Path, reference, encoder) -> None:
    shard, ref = reference
    out = tmp_path / "out"
    child = start_child(shard, out, 2, tmp_path / "gate")
    wait_until_parked(child, tmp_path / "gate")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    done_at_kill = markers(out)
    assert 2 <= done_at_kill < N_SEQS // PART_SIZE  # really interrupted mid-shard
    assert read_metadata(out)["complete"] is False
    with pytest.raises(OutputIntegrityError, match="incomplete"):
        open_embeddings(out)
    with pytest.raises(ConfigError, match="not empty; pass --resume"):
        run(shard, out, cfg(), encoder)
    record = run(shard, out, cfg(resume=True), encoder)
    stage = record["stages"][0]
    assert stage["parts_skipped"] == done_at_kill
    assert stage["parts_written"] == N_SEQS // PART_SIZE - done_at_kill
    assert_same(out, ref)


@pytest.mark.slow
def test_sigterm_after_one_part_then_sigkill_during_resume(tmp_path: Path, reference, encoder) -> None:
    shard, ref = reference
    out = tmp_path / "out"
    child = start_child(shard, out, 1, tmp_path / "gate")
    wait_until_parked(child, tmp_path / "gate")
    child.send_signal(signal.SIGTERM)
    (tmp_path / "gate" / "go").touch()
    _, err = child.communicate(timeout=60)
    assert child.returncode == 75, err[-2000:]
    assert "rerun with --resume" in err
    n = markers(out)
    assert 1 <= n < N_SEQS // PART_SIZE - 1
    for p in range(n):  # every marked part is complete and intact
        assert check_part(out, p) is None
    assert json.loads((out / "run_record.json").read_text())["status"] == "interrupted"
    # resume in a child, and SIGKILL that one after it has added one more part
    child = start_child(shard, out, n + 1, tmp_path / "gate2", resume=True)
    wait_until_parked(child, tmp_path / "gate2")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert markers(out) < N_SEQS // PART_SIZE
    run(shard, out, cfg(resume=True), encoder)
    assert_same(out, ref)


def test_corrupted_and_partial_parts_are_redone(tmp_path: Path, reference, encoder) -> None:
    shard, ref = reference
    out = tmp_path / "out"
    run(shard, out, cfg(), encoder)
    # part 1: a flipped byte (same size) - only the checksum can tell
    data = bytearray(PartFiles(out, 1).vectors.read_bytes())
    data[-3] ^= 0xFF
    PartFiles(out, 1).vectors.write_bytes(bytes(data))
    PartFiles(out, 2).marker.unlink()  # part 2: vectors written, marker missing
    ids3 = PartFiles(out, 3).ids
    ids3.write_text(ids3.read_text()[:-4])  # part 3: truncated ids file
    PartFiles(out, 4).vectors.unlink()  # part 4: marker without its vectors
    (out / ".part-00005.npy.abc.tmp").write_bytes(b"junk")  # leftover of a killed atomic write
    assert "checksum" in check_part(out, 1)
    with pytest.raises(OutputIntegrityError, match="part 1 is not valid"):
        open_embeddings(out)
    record = run(shard, out, cfg(resume=True), encoder)
    assert record["stages"][0]["parts_written"] == 4 and record["stages"][0]["parts_skipped"] == 2
    assert not list(out.glob(".*.tmp"))
    assert_same(out, ref)
    # a complete directory resumes to a no-op
    record = run(shard, out, cfg(resume=True), encoder)
    assert record["stages"][0]["parts_written"] == 0 and record["stages"][0]["parts_skipped"] == 6


def test_resume_refuses_other_model_precision_or_input(tmp_path: Path, reference, encoder) -> None:
    shard, ref = reference
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "part-00000.npy").write_bytes(b"x")
    before_ref, before_stray = snapshot(ref), snapshot(stray)
    with pytest.raises(ResumeMismatchError, match=r"precision \(existing 'fp32', now 'bf16'\)"):
        run(shard, ref, cfg(resume=True, precision="bf16"), encoder)
    with pytest.raises(ResumeMismatchError, match="model .*esm2_t12_35M_UR50D"):
        run(shard, ref, cfg(resume=True, model="random:esm2_t12_35M_UR50D"), encoder)
    with pytest.raises(ResumeMismatchError, match="seed"):
        run(shard, ref, cfg(resume=True, seed=3), encoder)
    other = write_shard(tmp_path / "other.parquet", proteins(N_SEQS, seed=9))
    with pytest.raises(ResumeMismatchError, match="fingerprint"):
        run(other, ref, cfg(resume=True), encoder)
    with pytest.raises(ResumeMismatchError, match="no metadata.json"):
        run(shard, stray, cfg(resume=True), encoder)
    # the refused attempts wrote nothing, not even the same bytes again
    assert changed(before_ref, ref) == [] and changed(before_stray, stray) == []
