"""The scheduler's decisions, without processes: assignment, retries, retirement, redistribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, WorkerFailedError
from pipeline.embed.multigpu.scheduler import (
    Outcome,
    Scheduler,
    Task,
    TaskStatus,
    make_slots,
    token_balanced_split,
)


def _tasks(n: int, slots: int) -> list[Task]:
    return [
        Task(f"shard-{k:03d}", Path(f"s{k}.parquet"), Path(f"out/{k}"), preferred=k % slots) for k in range(n)
    ]


def test_each_slot_starts_its_own_shard_first() -> None:
    slots = make_slots([3, 5], None)
    assert [s.device for s in slots] == ["cuda:3", "cuda:5"] and [s.gpu for s in slots] == [3, 5]
    sched = Scheduler(slots, _tasks(4, 2), max_retries=1)
    started = sched.assignments()
    assert [(s.index, t.name) for s, t in started] == [(0, "shard-000"), (1, "shard-001")]
    assert sched.assignments() == []  # both slots busy
    sched.succeeded(1, {"ok": 1})
    assert [(s.index, t.name) for s, t in sched.assignments()] == [(1, "shard-003")]


def test_a_failure_is_retried_on_the_same_slot_until_the_limit_then_redistributed() -> None:
    sched = Scheduler(make_slots(None, 2), _tasks(2, 2), max_retries=1)
    sched.assignments()
    task, outcome = sched.failed(1, "boom")
    assert outcome == Outcome.RETRY and task.status == TaskStatus.PENDING
    again = sched.assignments()
    assert [(s.index, t.name, t.attempts) for s, t in again] == [(1, "shard-001", 2)]
    task, outcome = sched.failed(1, "boom again")
    assert outcome == Outcome.REDISTRIBUTE
    stats = sched.stats[1]
    assert not stats.healthy and stats.failures == 2 and stats.retries == 1
    assert stats.errors == ["shard-001: boom", "shard-001: boom again"]
    kept = Task("shard-001.kept", task.shard_path, Path("kept"))
    subs = [Task("shard-001.r0", Path("r0.parquet"), Path("out/r0"))]
    sched.redistributed(task, 1, kept, subs)
    assert task.status == TaskStatus.REDISTRIBUTED and kept.status == TaskStatus.KEPT
    sched.succeeded(0)
    assert [(s.index, t.name) for s, t in sched.assignments()] == [(0, "shard-001.r0")]
    sched.succeeded(0)
    assert sched.finished()
    assert sorted(t.name for t in sched.outputs()) == ["shard-000", "shard-001.kept", "shard-001.r0"]


def test_a_success_resets_the_consecutive_failure_count() -> None:
    sched = Scheduler(make_slots(None, 1), _tasks(2, 1), max_retries=1)
    sched.assignments()
    assert sched.failed(0, "x")[1] == Outcome.RETRY
    sched.assignments()
    sched.succeeded(0)
    sched.assignments()
    assert sched.failed(0, "y")[1] == Outcome.RETRY  # 1 in a row again, not 2


def test_retiring_the_last_healthy_slot_fails_the_run() -> None:
    sched = Scheduler(make_slots(None, 1), _tasks(1, 1), max_retries=0)
    sched.assignments()
    with pytest.raises(WorkerFailedError, match="every worker failed.*boom"):
        sched.failed(0, "boom")


def test_orphaned_tasks_go_to_any_free_slot_biggest_first() -> None:
    tasks = [
        Task("a", Path("a"), Path("oa"), tokens=10),
        Task("b", Path("b"), Path("ob"), tokens=50),
        Task("c", Path("c"), Path("oc"), preferred=1, tokens=5),
    ]
    sched = Scheduler(make_slots(None, 2), tasks, max_retries=0)
    assert [(s.index, t.name) for s, t in sched.assignments()] == [(0, "b"), (1, "c")]


def test_stopped_tasks_stay_pending_for_a_resume() -> None:
    sched = Scheduler(make_slots(None, 1), _tasks(1, 1), max_retries=0)
    sched.assignments()
    sched.stopped(0)
    assert [t.name for t in sched.pending()] == ["shard-000"] and not sched.running


def test_manifest_round_trip_drops_a_preferred_slot_that_no_longer_exists() -> None:
    task = Task("x", Path("x.parquet"), Path("out/x"), preferred=3, status=TaskStatus.KEPT, parent="p")
    back = Task.from_json(task.to_json(), alive={0, 1})
    assert (back.name, back.preferred, back.status, back.parent) == ("x", None, TaskStatus.KEPT, "p")


def test_bad_slot_and_task_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        make_slots([0, 0], None)
    with pytest.raises(ConfigError, match=">= 1"):
        make_slots(None, 0)
    with pytest.raises(ConfigError, match="distinct"):
        Scheduler(make_slots(None, 1), [Task("a", Path("a"), Path("1")), Task("a", Path("b"), Path("2"))], 0)


def test_token_balanced_split_keeps_groups_within_one_row_of_each_other() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, 200, 1001)
    groups = token_balanced_split(tokens, 3)
    assert sorted(np.concatenate(groups).tolist()) == list(range(1001))
    sums = [int(tokens[g].sum()) for g in groups]
    assert max(sums) - min(sums) <= int(tokens.max())
    # by hand: 7 -> group 0, 5 -> group 1, 4 -> group 2, then 3 -> the lightest (group 2, 4 tokens)
    assert [g.tolist() for g in token_balanced_split([3, 7, 4, 5], 3)] == [[1], [3], [0, 2]]


def test_the_pipeline_shards_are_token_balanced(tmp_path) -> None:
    """Equal work per GPU: the stride deal over length-sorted frames gives token sums that differ by
    less than one frame, whatever the length mix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.prepare.shard import write_table_shards

    rng = np.random.default_rng(3)
    lengths = np.where(rng.random(999) < 0.7, 50, rng.integers(5, 50, 999))
    table = pa.table(
        {
            "id": [f"f{i}" for i in range(999)],
            "nucleotide": ["A" * (3 * k) for k in lengths],
            "protein": ["M" * int(k) for k in lengths],
        }
    )
    for n in (2, 3, 4):
        sums = [
            sum(len(p) + 2 for p in pq.read_table(path).column("protein").to_pylist())
            for path in write_table_shards(table, n, tmp_path / f"n{n}")
        ]
        assert max(sums) - min(sums) <= int(lengths.max()) + 2, (n, sums)
