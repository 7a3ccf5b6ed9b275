"""`pytest benchmarks/` collects the ``bench_*.py`` suites (without any extra configuration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_suites_are_collected():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any(
        line.startswith("benchmarks/bench_pipeline.py::test_pipeline_end_to_end") for line in collected
    )
    files = {line.split("::")[0] for line in collected}
    assert all(Path(f).name.startswith("bench_") for f in files)
    assert not any("/gpu/" in f for f in files)  # the GPU scripts are run by hand, not collected


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks" / "gpu").glob("*_device.py")))
def test_gpu_scripts_import_and_answer_help(script):
    # The GPU scripts only run by hand on a GPU machine; this catches a broken import of what they
    # share (benchmarks/gpu/common.py, validation.metrics, pipeline.models.packing) on every CI run.
    proc = subprocess.run(
        [sys.executable, f"benchmarks/gpu/{script}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--out" in proc.stdout
