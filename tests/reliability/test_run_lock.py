"""One output directory, one run: a second run into a directory in use is refused at once (exit 11)
and the first is left undisturbed; the lock dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fixtures.airflow  # noqa: F401  (the Airflow environment, before airflow is imported)
import pytest

from pipeline.cli import main
from pipeline.core.errors import RunInProgressError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.fa"

HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from pipeline.core.paths import run_lock
with run_lock({path!r}, shared={shared}):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held(tmp_path: Path):
    """Start a separate process that holds the lock of a directory (another run in progress)."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path, shared: bool = False) -> subprocess.Popen:
        code = HOLDER.format(repo=str(REPO), path=str(path), shared=shared)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_predict_into_a_busy_directory_is_refused_at_once(tmp_path, held, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "first_run_file.txt").write_text("the first run's work")
    held(out)
    before = _snapshot(out)
    with pytest.raises(SystemExit) as info:
        main(["predict", str(DEMO), "-o", str(out), "--demo", "--chunk-size", "300"])
    err = capsys.readouterr().err
    assert info.value.code == 11, err
    assert "in use by another run" in err and "Traceback" not in err
    assert _snapshot(out) == before


def test_the_lock_dies_with_its_process(tmp_path, held):
    from pipeline.core.paths import run_lock

    out = tmp_path / "out"
    proc = held(out)
    with pytest.raises(RunInProgressError), run_lock(out):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel releases the lock as the process is reaped
        try:
            with run_lock(out):
                break
        except RunInProgressError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_shared_holders_coexist_but_exclude_an_exclusive_one(tmp_path, held):
    from pipeline.core.paths import run_lock

    out = tmp_path / "out"
    held(out, shared=True)
    with run_lock(out, shared=True):
        pass
    with pytest.raises(RunInProgressError), run_lock(out):
        pass


@pytest.mark.parametrize("task", ["prepare", "shard", "classify", "merge", "record", "embed"])
def test_dag_tasks_refuse_a_directory_another_run_holds(tmp_path, held, monkeypatch, task):
    """The DAG's task bodies take the run directory's lock before touching it."""
    import pipeline.airflow_tasks as tasks

    monkeypatch.setenv("VIRNUCPRO_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.setenv("VIRNUCPRO_INPUT_ROOT", str(REPO))
    out = tmp_path / "run"
    shard = out / "shards" / "shard_000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"")
    held(out)
    called: list[str] = []
    import pipeline.run.steps as steps

    for name in ("prepare", "shard", "embed", "classify", "merge", "record"):
        monkeypatch.setattr(steps, f"{name}_step", lambda *a, _n=name, **k: called.append(_n))
    body = _task_body(tasks, task)
    params = {"output_dir": str(out), "gpu_slots": 0, "metrics_db": "", "input_path": str(DEMO)}
    with pytest.raises(RunInProgressError):
        body(out, params)
    assert called == []


def _task_body(tasks, name):
    """Call one production task's body the way Airflow would (the decorated function's callable)."""
    from airflow.sdk import dag

    captured = {}

    @dag(dag_id=f"lock_probe_{name}", schedule=None)
    def probe():
        captured["chain"] = tasks.production_chain(f"lock_probe_{name}", "/nonexistent")

    built = probe()
    task = built.get_task(name)
    fn = task.python_callable

    class TI:
        map_index = 0
        try_number = 1

    def call(run_dir: Path, params: dict):
        kwargs = {
            "prepare": dict(params=params, run_id="manual__1"),
            "shard": dict(run_dir=str(run_dir), params=params),
            "embed": dict(
                shard_path=str(run_dir / "shards" / "shard_000.parquet"),
                run_dir=str(run_dir),
                params=params,
                ti=TI(),
            ),
            "classify": dict(run_dir=str(run_dir), shard_paths=[], params=params),
            "merge": dict(run_dir=str(run_dir), scores=""),
            "record": dict(run_dir=str(run_dir), outputs={}, params=params, run_id="manual__1"),
        }[name]
        return fn(**kwargs)

    return call
