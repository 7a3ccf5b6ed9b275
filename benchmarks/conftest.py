"""Shared setup of the pytest-benchmark suites in this directory.

- Collects ``bench_*.py`` (pytest's default pattern is ``test_*.py``) without touching the root
  configuration, so ``make test`` (``pytest tests``) never runs benchmarks.
- ``gpu``: whether CUDA is usable; ``bench_device``: ``cuda`` or ``cpu``.
- ``bench_size``: CPU-sized work by default, GPU-sized when CUDA is present;
  ``--bench-size cpu|gpu`` forces one.
- ``synthetic_reads`` / ``synthetic_fasta`` / ``synthetic_frame_set``: seeded synthetic data.
- ``@pytest.mark.gpu`` benchmarks are skipped without CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class BenchSize:
    """How big the shared synthetic workloads are."""

    name: str
    reads: int  # synthetic DNA records in `synthetic_fasta`
    read_length: tuple[int, int]
    frames: int  # frames in `synthetic_frame_set`
    esm_model: str
    dnabert_model: str


SIZES = {
    "cpu": BenchSize(
        "cpu",
        reads=12,
        read_length=(200, 700),
        frames=48,
        esm_model="random:esm2_t6_8M_UR50D",
        dnabert_model="random:dnabert-s-tiny",
    ),
    "gpu": BenchSize(
        "gpu",
        reads=2000,
        read_length=(300, 1500),
        frames=8192,
        esm_model="random:esm2_t33_650M_UR50D",
        dnabert_model="random:dnabert-s",
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-size",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="Workload size of the benchmarks: auto (gpu when CUDA is present), cpu or gpu.",
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    # Paths given on the command line are collected by pytest itself; only add the directory walk.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (marker: gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def gpu() -> bool:
    """True when a CUDA device is usable."""
    return _cuda_available()


@pytest.fixture(scope="session")
def bench_device(gpu: bool) -> str:
    return "cuda" if gpu else "cpu"


@pytest.fixture(scope="session")
def bench_size(request: pytest.FixtureRequest, gpu: bool) -> BenchSize:
    choice = request.config.getoption("--bench-size")
    if choice == "auto":
        choice = "gpu" if gpu else "cpu"
    return SIZES[choice]


@pytest.fixture(scope="session")
def synthetic_reads(bench_size: BenchSize) -> list[tuple[str, str]]:
    """Seeded (id, DNA) records; GC-rich, so six-frame translation keeps several frames per chunk."""
    rng = np.random.default_rng(12345)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    lo, hi = bench_size.read_length
    records = []
    for i in range(bench_size.reads):
        gc = rng.uniform(0.6, 0.85)
        probs = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
        seq = bases[rng.choice(4, size=int(rng.integers(lo, hi)), p=probs)].tobytes().decode()
        records.append((f"bench_read_{i}", seq))
    return records


@pytest.fixture(scope="session")
def synthetic_fasta(tmp_path_factory: pytest.TempPathFactory, synthetic_reads) -> Path:
    """`synthetic_reads` as a FASTA file (60 bases a line)."""
    path = tmp_path_factory.mktemp("bench-data") / "reads.fa"
    with open(path, "w", encoding="ascii") as fh:
        for rid, seq in synthetic_reads:
            fh.write(f">{rid}\n")
            fh.writelines(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))
    return path


@pytest.fixture(scope="session")
def synthetic_frame_set(bench_size: BenchSize):
    """Prepare-style frames (ids, nucleotide, protein) from seeded synthetic reads."""
    from validation.equivalence import synthetic_frames

    return synthetic_frames(bench_size.frames, chunk_size=300, seed=0)
