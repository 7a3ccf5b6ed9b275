"""SIGTERM at several points of ``virnucpro predict``: exit 75, then ``--resume`` finishes exactly.

Each run is a real CLI process on the demo models. To land the signal at one exact point, the
child wraps one library function to send SIGTERM to its own process there (the signal itself is
real: delivered by the kernel, handled by whatever handler the run has installed at that moment).
The resumed run's outputs must equal, byte for byte, those of a run that was never interrupted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import DEMO, run_cli, run_python

from pipeline.classify.merge import HIGHESTSCORE_FILE, PREDICTIONS_FILE, SUMMARY_FILE
from pipeline.core.errors import Interrupted

MERGED = (PREDICTIONS_FILE, HIGHESTSCORE_FILE, SUMMARY_FILE)
EXIT_INTERRUPTED = Interrupted.exit_code  # 75

# point -> (module, function) wrapped to raise SIGTERM: before the call, or after it returned
POINTS = {
    "prepare, in the middle of the input": ("pipeline.prepare.stage", "read_fasta_bytes", "during"),
    "shard, before writing": ("pipeline.prepare.shard", "write_table_shards", "before"),
    "scoring, after the last part was written": ("pipeline.embed.frames", "write_part", "after"),
    "merge, before it starts": ("pipeline.classify.merge", "merge", "before"),
}

TERM_AT = """
import importlib, os, signal, sys
module_name, name, when = sys.argv[1:4]
module = importlib.import_module(module_name)
real = getattr(module, name)

def term():
    os.kill(os.getpid(), signal.SIGTERM)

if when == "during":
    def wrapped(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 10:
                term()
            yield item
elif when == "before":
    def wrapped(*args, **kwargs):
        term()
        return real(*args, **kwargs)
else:
    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        term()
        return out

setattr(module, name, wrapped)
from pipeline.cli import main
main(sys.argv[4:])
"""


def predict_args(out: Path, *extra: str) -> list[str]:
    return ["predict", str(DEMO), "-o", str(out), "--demo", *extra]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "out"
    proc = run_cli(*predict_args(out))
    assert proc.returncode == 0, proc.stderr
    return {n: (out / n).read_bytes() for n in MERGED}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every point: the interrupted run's exit status and stderr, then the resumed run's."""
    results = {}
    for point, (module, name, when) in POINTS.items():
        out = tmp_path_factory.mktemp("term") / "out"
        first = run_python(TERM_AT, module, name, when, *predict_args(out))
        again = run_cli(*predict_args(out, "--resume"))
        results[point] = {"out": out, "first": first, "resumed": again}
    return results


@pytest.mark.parametrize("point", list(POINTS))
def test_sigterm_exits_75_with_one_line(interrupted: dict, point: str) -> None:
    first = interrupted[point]["first"]
    assert first.returncode == EXIT_INTERRUPTED, f"exit {first.returncode}: {first.stderr[-2000:]}"
    assert "Traceback" not in first.stderr
    assert "--resume" in first.stderr


@pytest.mark.parametrize("point", list(POINTS))
def test_resume_after_sigterm_is_exact(interrupted: dict, clean: dict[str, bytes], point: str) -> None:
    resumed = interrupted[point]["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = interrupted[point]["out"]
    assert {n: (out / n).read_bytes() for n in MERGED} == clean


def test_no_point_is_missed() -> None:
    """Each wrapped function exists where the test expects it (a rename would silently skip a point)."""
    import importlib

    for module, name, _ in POINTS.values():
        assert callable(getattr(importlib.import_module(module), name)), (module, name)
