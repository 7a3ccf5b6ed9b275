"""The run's one progress display: sums over workers, rate, ETA, quiet off a terminal."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.embed.progress import (
    ProgressFile,
    RunProgress,
    TaskProgress,
    format_eta,
    read_progress_dir,
    snapshot,
)


def test_snapshot_sums_tasks_and_derives_rate_and_eta() -> None:
    tasks = {
        "shard-000": TaskProgress(100, 300, 4000, 12000),
        "shard-001": TaskProgress(50, 300, 2000, 12000),
    }
    snap = snapshot(tasks, 600, elapsed_s=3.0)
    assert (snap.frames_done, snap.tokens_done, snap.tokens_todo) == (150, 6000, 24000)
    assert snap.tokens_per_s == 2000.0
    assert snap.eta_s == 9.0  # 18000 tokens left at 2000/s
    assert snap.line() == "150/600 frames (25.0%), 2.00K tokens/s, ETA 9s"
    assert snapshot({}, 10, 1.0).eta_s is None


def test_eta_formatting() -> None:
    assert [format_eta(x) for x in (None, 5, 65, 3725)] == ["?", "5s", "1m05s", "1h02m05s"]


def test_off_a_terminal_it_logs_one_line_per_period(caplog) -> None:
    now = [0.0]
    progress = RunProgress(100, tty=False, log_every_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="pipeline.embed.progress"):
        now[0] = 10.0
        progress.update("a", TaskProgress(10, 100, 100, 1000))
        now[0] = 31.0
        progress.update("a", TaskProgress(40, 100, 400, 1000))
        now[0] = 40.0
        progress.update("a", TaskProgress(50, 100, 500, 1000))
        progress.close()
    assert len(progress.lines) == 2  # one at 31 s, one at close; none at 10 s or 40 s
    assert progress.lines[0].startswith("40/100 frames (40.0%)")
    assert [r.message for r in caplog.records if r.message.startswith("progress:")] == [
        f"progress: {line}" for line in progress.lines
    ]


def test_disabled_progress_is_silent() -> None:
    progress = RunProgress(10, enabled=False, tty=False, log_every_s=0.0)
    progress.update("a", TaskProgress(5, 10, 5, 10))
    progress.close()
    assert progress.lines == []


def test_workers_report_through_files_the_display_reads(tmp_path: Path) -> None:
    ProgressFile(tmp_path / "shard-000.json").write(TaskProgress(3, 9, 30, 90))
    (tmp_path / "shard-001.json").write_text("{not json")  # half-written: skipped
    got = read_progress_dir(tmp_path)
    assert got == {"shard-000": TaskProgress(3, 9, 30, 90)}
    seen = []
    ProgressFile(None, callback=seen.append).write(TaskProgress(1, 2, 3, 4))
    assert seen == [TaskProgress(1, 2, 3, 4)]


def test_on_a_terminal_one_bar_shows_frames_rate_and_eta(capsys) -> None:
    now = [0.0]
    progress = RunProgress(200, tty=True, clock=lambda: now[0])
    now[0] = 2.0
    progress.update("shard-000", TaskProgress(50, 100, 1000, 4000))
    progress.update("shard-001", TaskProgress(30, 100, 600, 4000))
    bar = progress._bar
    assert bar.n == 80 and bar.total == 200
    assert "800 tok/s" in bar.postfix and "ETA 8s" in bar.postfix  # (8000 - 1600) tokens at 800/s
    progress.close()
    assert progress.lines == []  # the bar, no log lines
