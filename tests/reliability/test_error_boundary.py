"""One error boundary: every OS error, corrupt state file and malformed input ends in ONE line that
names the path and what to do, with the documented exit code; a traceback only with ``--debug``.

Faults are real where the machine allows (a file where a directory is expected, a directory where a
file is expected, a file-size limit, truncated and garbage files); permission and read-only errors
are injected at the system-call wrapper because the tests may run as root, which ignores modes.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.fa"
VIRNUCPRO = str(Path(sys.executable).parent / "virnucpro")
TINY = ["--esm-model", "random:esm2_t6_8M_UR50D", "--dnabert-model", "random:dnabert-s-tiny"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``virnucpro ARGS`` in this process; returns (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0), capsys.readouterr().err


def assert_one_line(err: str, code: int, expected: int, *needles: str) -> None:
    """The error contract: the exit code, no traceback, one ``error:`` line naming ``needles``."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == expected, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished demo predict run (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.raises(SystemExit) as info:
        main(["predict", str(DEMO), "-o", str(out), "--demo", "--chunk-size", "300"])
    assert info.value.code in (0, None)
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


# ---- OS errors ---------------------------------------------------------------------------------------


def test_output_under_a_regular_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(["prepare", str(DEMO), "-o", str(blocker / "out")], capsys)
    assert_one_line(err, code, 74, str(blocker / "out"), "not a directory")


def test_predict_output_under_a_regular_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(["predict", str(DEMO), "-o", str(blocker / "out"), "--demo"], capsys)
    assert_one_line(err, code, 74, str(blocker / "out"))


def test_input_that_is_a_directory_is_one_line(tmp_path, capsys):
    code, err = run_cli(["ingest", str(tmp_path), "--db", str(tmp_path / "m.duckdb")], capsys)
    assert code in (2, 3, 74), err
    assert "Traceback" not in err
    assert sum(line.startswith(("error:", "Error:")) for line in err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("err_no", "words"),
    [
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "no space left"),
        (errno.EPERM, "not permitted"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_injected_os_errors_are_one_line(tmp_path, capsys, monkeypatch, err_no, words):
    """A write refused by the OS (as on an unwritable, immutable, read-only or full disk)."""
    real_replace = os.replace
    target_dir = tmp_path / "out"

    def refusing_replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(target_dir)):
            raise OSError(err_no, os.strerror(err_no), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refusing_replace)
    code, err = run_cli(["prepare", str(DEMO), "-o", str(target_dir)], capsys)
    assert_one_line(err, code, 74, str(target_dir), words)


def test_write_without_a_file_name_still_names_a_path(tmp_path, capsys, monkeypatch):
    """ENOSPC from ``write()`` carries no file name; the message names the file being written."""
    import pipeline.core.atomic as atomic

    real_open = open
    target_dir = tmp_path / "out"

    class FullDisk:
        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return FullDisk(fh) if "w" in mode and str(path).startswith(str(target_dir)) else fh

    monkeypatch.setattr(atomic, "open", full_open, raising=False)
    code, err = run_cli(
        ["predict", str(DEMO), "-o", str(target_dir), "--demo", "--chunk-size", "300"], capsys
    )
    assert_one_line(err, code, 74, str(target_dir), "no space left")


def test_file_size_limit_in_a_real_process_is_one_line(tmp_path):
    """``ulimit -f``: writes past the limit fail with EFBIG (Python ignores SIGXFSZ)."""
    big = tmp_path / "big.fa"
    big.write_text("".join(f">r{i}\n{'ACGTACGTAT' * 60}\n" for i in range(400)))
    limit = 64 * 1024

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [VIRNUCPRO, "prepare", str(big), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        preexec_fn=limit_files,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert_one_line(proc.stderr, proc.returncode, 74, str(tmp_path / "out"))


# ---- corrupt state files ------------------------------------------------------------------------------


def test_garbage_predict_inputs_json_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "predict_inputs.json").write_text("SECRET-GARBAGE {{{")
    code, err = run_cli(
        ["predict", str(DEMO), "-o", str(run), "--demo", "--chunk-size", "300", "--resume"], capsys
    )
    assert_one_line(err, code, 8, str(run / "predict_inputs.json"))
    assert "SECRET" not in err


def test_invalid_run_record_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "run_record.json").write_text("SECRET-GARBAGE {{{")
    db = _tiny_db(tmp_path)
    code, err = run_cli(
        ["report", "--db", str(db), "-o", str(tmp_path / "r.html"), "--run-dir", str(run)], capsys
    )
    assert_one_line(err, code, 8, str(run / "run_record.json"))
    assert "SECRET" not in err


def test_run_record_that_is_not_an_object_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "run_record.json").write_text("[1, 2, 3]")
    db = _tiny_db(tmp_path)
    code, err = run_cli(
        ["report", "--db", str(db), "-o", str(tmp_path / "r.html"), "--run-dir", str(run)], capsys
    )
    assert_one_line(err, code, 8, str(run / "run_record.json"))


def test_truncated_frame_scores_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    scores = run / "frame_scores.parquet"
    scores.write_bytes(scores.read_bytes()[: scores.stat().st_size // 2])
    db = _tiny_db(tmp_path)
    code, err = run_cli(
        ["report", "--db", str(db), "-o", str(tmp_path / "r.html"), "--run-dir", str(run)], capsys
    )
    assert_one_line(err, code, 8, str(scores))


def test_truncated_duckdb_file_is_one_line(tmp_path, capsys):
    db = _tiny_db(tmp_path)
    data = db.read_bytes()
    db.write_bytes(data[: max(len(data) // 3, 4096)])
    code, err = run_cli(["report", "--db", str(db), "-o", str(tmp_path / "r.html")], capsys)
    assert_one_line(err, code, 8, str(db))


# ---- malformed inputs ---------------------------------------------------------------------------------


def test_text_file_as_classifier_is_one_line(tmp_path, capsys):
    fake = tmp_path / "model.pth"
    fake.write_text("hello, this is not a checkpoint\n")
    code, err = run_cli(
        ["predict", str(DEMO), "-o", str(tmp_path / "out"), "--classifier", str(fake), *TINY], capsys
    )
    assert_one_line(err, code, 4, str(fake))
    assert not (tmp_path / "out" / "embeddings").exists()


def test_esm_checkpoint_with_a_missing_key_is_one_line(tmp_path, capsys):
    import argparse

    import torch

    ckpt = tmp_path / "esm.pt"
    cfg = argparse.Namespace(encoder_layers=1, encoder_embed_dim=32, encoder_attention_heads=4)
    torch.save({"cfg": {"model": cfg}}, ckpt)  # no "model" state dict
    code, err = run_cli(
        [
            "predict",
            str(DEMO),
            "-o",
            str(tmp_path / "out"),
            "--classifier",
            "random",
            "--esm-model",
            str(ckpt),
            "--dnabert-model",
            "random:dnabert-s-tiny",
        ],
        capsys,
    )
    assert_one_line(err, code, 4, str(ckpt))


def test_esm_checkpoint_whose_state_is_not_a_dict_is_one_line(tmp_path, capsys):
    import argparse

    import torch

    ckpt = tmp_path / "esm.pt"
    cfg = argparse.Namespace(encoder_layers=1, encoder_embed_dim=32, encoder_attention_heads=4)
    torch.save({"cfg": {"model": cfg}, "model": [1, 2, 3]}, ckpt)
    code, err = run_cli(
        [
            "predict",
            str(DEMO),
            "-o",
            str(tmp_path / "out"),
            "--classifier",
            "random",
            "--esm-model",
            str(ckpt),
            "--dnabert-model",
            "random:dnabert-s-tiny",
        ],
        capsys,
    )
    assert_one_line(err, code, 4, str(ckpt))


# ---- matplotlib mathtext in record ids -----------------------------------------------------------------


def test_dollar_record_ids_do_not_break_the_report(tmp_path, capsys):
    fasta = tmp_path / "dollar.fa"
    records = DEMO.read_text().split(">")[1:4]
    ids = ["a$\\foo$b", "c$^{x}_$d", "$$"]
    fasta.write_text("".join(f">{new_id}\n{rec.split(chr(10), 1)[1]}" for new_id, rec in zip(ids, records)))
    run = tmp_path / "run"
    code, err = run_cli(["predict", str(fasta), "-o", str(run), "--demo", "--chunk-size", "300"], capsys)
    assert code == 0, err
    db = tmp_path / "m.duckdb"
    assert run_cli(["ingest", str(run / "run_record.json"), "--db", str(db)], capsys)[0] == 0
    html = tmp_path / "r.html"
    code, err = run_cli(["report", "--db", str(db), "-o", str(html), "--run-dir", str(run)], capsys)
    assert code == 0, err
    run_id = json.loads((run / "run_record.json").read_text())["run_id"]
    assert run_id in html.read_text()  # the report rendered this run, not an empty page


def test_dollar_labels_render_in_the_validation_plots():
    import pandas as pd

    from validation import plots

    frame = pd.DataFrame({"label": ["embed a$\\foo$b", "$x^$"], "seconds": [1.0, 2.0]})
    assert plots.stage_breakdown(frame).startswith("data:image/png")  # mathtext would raise ValueError


# ---- --debug -------------------------------------------------------------------------------------------


def test_debug_prints_the_traceback(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(["--debug", "prepare", str(DEMO), "-o", str(blocker / "out")], capsys)
    assert code == 74
    assert "Traceback" in err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1


def test_unexpected_exception_is_one_line_without_debug(capsys, monkeypatch):
    import pipeline.cli.prepare as prepare_cmd

    def boom(*args, **kwargs):
        raise ZeroDivisionError("surprise")

    monkeypatch.setattr(prepare_cmd, "prepare", boom, raising=False)
    monkeypatch.setattr("pipeline.prepare.stage.prepare", boom)
    code, err = run_cli(["prepare", str(DEMO), "-o", "/tmp/vnp-unused-out"], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert "--debug" in err


# ---- DAG task wrappers ----------------------------------------------------------------------------------


def test_dag_task_boundary_turns_os_errors_into_one_line(tmp_path, monkeypatch):
    from pipeline.airflow_tasks import run_step
    from pipeline.core.errors import VirNucProError

    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def step(path: Path) -> None:
        (path / "x").write_text("y")

    with pytest.raises(VirNucProError) as info:
        run_step(step, blocker / "sub")
    message = str(info.value)
    assert "\n" not in message and str(blocker / "sub") in message
    assert info.value.exit_code == 74


def _tiny_db(tmp_path: Path) -> Path:
    from validation.metrics_store import MetricsStore

    doc = {
        "schema": "virnucpro.run/1",
        "run_id": "tiny",
        "kind": "predict",
        "started_at": "2026-11-30T00:00:00+00:00",
        "finished_at": "2026-11-30T00:01:00+00:00",
        "environment": {"host": "h"},
        "config": {},
        "stages": [{"stage": "prepare", "seconds": 1.0}],
    }
    record = tmp_path / "tiny_record.json"
    record.write_text(json.dumps(doc))
    db = tmp_path / "tiny.duckdb"
    MetricsStore(db).ingest_file(record)
    return db
