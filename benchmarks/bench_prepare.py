"""Throughput of ``prepare`` (chunking + six-frame translation + writing) on seeded synthetic input.

Run: ``pytest benchmarks/bench_prepare.py`` (add ``--benchmark-autosave`` to keep the result).
Each case stores ``mbp_per_s`` (input megabases per second of wall time, median round),
``cpu_mbp_per_s`` (per second of this process's CPU time, from the warm-up run) and the input
size in ``benchmark.extra_info``. Half of the records are built from sense codons so that, as in
real viral data, many chunks keep open frames and the per-frame output path is exercised.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.prepare.stage import prepare
from pipeline.prepare.translate import STANDARD_CODE

# One pytest-benchmark group per model and stage: `--benchmark-compare` tables read per group.
pytestmark = pytest.mark.benchmark(group="prepare")

TOTAL_BASES = 3_000_000
CASES = {
    # name: (min length, max length, gzip)
    "reads_100_300bp": (100, 300, False),
    "reads_100_300bp_gzip": (100, 300, True),
    "contigs_1_20kbp": (1_000, 20_000, False),
}


def _sense_codons() -> np.ndarray:
    bases = "TCAG"
    codons = [a + b + c for a in bases for b in bases for c in bases]
    return np.array(
        [np.frombuffer(c.encode(), dtype=np.uint8) for c, aa in zip(codons, STANDARD_CODE) if aa != "*"]
    )


def write_synthetic_fasta(
    path: Path, total: int, lo: int, hi: int, seed: int = 0, compress: bool = False
) -> int:
    """Write about ``total`` bases of records of length ``lo..hi`` (60 bases a line); return bases written."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGT", dtype=np.uint8)
    sense = _sense_codons()
    parts: list[bytes] = []
    written = 0
    i = 0
    while written < total:
        length = int(rng.integers(lo, hi + 1))
        if i % 2:
            seq = sense[rng.integers(0, len(sense), length // 3 + 1)].ravel()[:length]
        else:
            seq = alphabet[rng.integers(0, 4, length)]
        if i % 7 == 0:
            seq = seq.copy()
            seq[rng.integers(0, length, 3)] = ord("N")
        text = seq.tobytes()
        parts.append(b">seq%d synthetic record %d\n" % (i, length))
        parts.append(b"\n".join(text[j : j + 60] for j in range(0, length, 60)) + b"\n")
        written += length
        i += 1
    data = b"".join(parts)
    path.write_bytes(gzip.compress(data, compresslevel=6) if compress else data)
    return written


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    root = tmp_path_factory.mktemp("prepare-bench")
    made = {}
    for name, (lo, hi, compress) in CASES.items():
        path = root / (name + (".fa.gz" if compress else ".fa"))
        made[name] = (path, write_synthetic_fasta(path, TOTAL_BASES, lo, hi, seed=1, compress=compress))
    tiny = root / "tiny.fa"
    write_synthetic_fasta(tiny, 1000, 100, 300)
    prepare(tiny, root / "tiny-out")  # imports pyarrow & co. outside any measurement
    return made


@pytest.mark.parametrize("chunk_size", [500, 300])
@pytest.mark.parametrize("case", list(CASES))
def test_prepare_throughput(benchmark, inputs, tmp_path: Path, case: str, chunk_size: int) -> None:
    path, bases = inputs[case]
    out = tmp_path / "out"
    cpu = time.process_time()
    prepare(path, out, chunk_size)  # warm-up (page cache); also gives the CPU-time figure
    cpu = time.process_time() - cpu
    paths = benchmark.pedantic(prepare, args=(path, out, chunk_size), rounds=3, iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "input_bases": bases,
            "chunk_size": chunk_size,
            "chunks": paths.stats.chunks,
            "frames_kept": paths.stats.frames,
            "mbp_per_s": round(bases / 1e6 / seconds, 2),
            # on a shared machine wall time includes waiting for a core; CPU time does not
            "cpu_mbp_per_s": round(bases / 1e6 / cpu, 2),
        }
    )
    assert paths.stats.bases == bases
