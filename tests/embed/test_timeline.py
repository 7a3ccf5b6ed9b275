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
