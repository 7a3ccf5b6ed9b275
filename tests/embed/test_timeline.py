"""Busy-fraction arithmetic and the event timeline, with fake events (no GPU needed)."""

from __future__ import annotations

import pytest

from pipeline.embed.timeline import DeviceTimeline, busy_fraction, union_seconds


def test_union_counts_overlaps_once_and_skips_empty_intervals() -> None:
    assert union_seconds([(0, 2), (1, 3), (5, 6), (4, 4)]) == pytest.approx(4.0)
    assert union_seconds([]) == 0.0


def test_busy_fraction_of_gapped_and_back_to_back_work() -> None:
    # 3 s of work in a 5 s window: a 2 s gap between the batches
    assert busy_fraction([(0.0, 1.0), (3.0, 5.0)]) == pytest.approx(0.6)
    assert busy_fraction([(0.0, 1.0), (1.0, 2.5)]) == pytest.approx(1.0)
    assert busy_fraction([]) is None
    assert busy_fraction([(2.0, 2.0)]) is None


class _Clock:
    now = 0.0


class _FakeEvent:
    """Like torch.cuda.Event(enable_timing=True): record() stamps the (fake) stream time."""

    def __init__(self, clock: _Clock) -> None:
        self.clock, self.t, self.synced = clock, None, False

    def record(self) -> None:
        self.t = self.clock.now

    def synchronize(self) -> None:
        self.synced = True

    def elapsed_time(self, other: _FakeEvent) -> float:
        return (other.t - self.t) * 1000.0  # milliseconds, like CUDA


def test_timeline_measures_spans_per_label_from_events() -> None:
    clock = _Clock()
    events: list[_FakeEvent] = []

    def factory() -> _FakeEvent:
        events.append(_FakeEvent(clock))
        return events[-1]

    timeline = DeviceTimeline(factory)
    clock.now = 10.0
    with timeline.span("esm2"):
        clock.now = 12.0
    clock.now = 13.0  # the device waited 1 s for the host
    with timeline.span("head"):
        clock.now = 13.5
    with timeline.span("esm2"):
        clock.now = 14.0
    summary = timeline.summary()
    assert events[-1].synced  # one wait, on the last event
    assert summary.window_s == pytest.approx(4.0)
    assert summary.busy_s == pytest.approx(3.0)
    assert summary.busy_fraction == pytest.approx(0.75)
    assert summary.seconds_by_label == pytest.approx({"esm2": 2.5, "head": 0.5})


def test_no_event_factory_records_nothing() -> None:
    timeline = DeviceTimeline(None)
    with timeline.span("esm2"):
        pass
    summary = timeline.summary()
    assert summary.busy_fraction is None and summary.seconds_by_label == {}


def test_cpu_timeline_uses_wall_clock_spans() -> None:
    timeline = DeviceTimeline.for_device("cpu")
    with timeline.span("esm2"):
        sum(range(10000))
    summary = timeline.summary()
    assert set(summary.seconds_by_label) == {"esm2"} and summary.seconds_by_label["esm2"] > 0


# ----------------------------------------------------------------------------------------------
# the runner's device loop: completion order and idle fraction, with fake events


class _CopyDone:
    """A fake device->host copy event: ``done`` says whether the device got there yet."""

    def __init__(self, done: bool) -> None:
        self.done, self.waited = done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited, self.done = True, True


def _loop_with(ready: list[_CopyDone]):
    import numpy as np

    from pipeline.embed.runner import _DeviceLoop, _Inflight

    loop = _DeviceLoop.__new__(_DeviceLoop)  # no encoder or device needed for the bookkeeping
    loop.inflight = __import__("collections").deque(
        _Inflight(np.array([i]), 1, None, r) for i, r in enumerate(ready)
    )
    return loop


def test_completed_yields_finished_batches_in_issue_order_without_waiting() -> None:
    events = [_CopyDone(True), _CopyDone(True), _CopyDone(False), _CopyDone(True)]
    loop = _loop_with(events)
    got = [int(item.rows[0]) for item in loop.completed(block=False)]
    assert got == [0, 1]  # batch 3 is done but comes after the unfinished batch 2
    assert not any(e.waited for e in events)


def test_completed_waits_only_when_too_many_batches_are_queued() -> None:
    from pipeline.embed.runner import MAX_INFLIGHT

    events = [_CopyDone(False) for _ in range(MAX_INFLIGHT + 2)]
    loop = _loop_with(events)
    got = [int(item.rows[0]) for item in loop.completed(block=False)]
    assert got == [0, 1] and [e.waited for e in events[:3]] == [True, True, False]
    assert len(loop.inflight) == MAX_INFLIGHT
    rest = [int(item.rows[0]) for item in loop.completed(block=True)]
    assert rest == list(range(2, MAX_INFLIGHT + 2)) and not loop.inflight


def test_runner_idle_fraction_from_timing_events() -> None:
    from pipeline.embed.runner import idle_fraction

    clock = _Clock()

    def at(t: float) -> _FakeEvent:
        clock.now = t
        event = _FakeEvent(clock)
        event.record()
        return event

    marks = [(at(0.0), at(2.0)), (at(3.0), at(4.0))]  # 3 s busy in a 4 s window
    assert idle_fraction(marks) == pytest.approx(0.25)
    assert idle_fraction([]) is None
