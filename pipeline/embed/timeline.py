"""How busy a device was: (start, end) event pairs around device work -> busy fraction and seconds.

The arithmetic (`busy_fraction`, `union_seconds`) is pure and works on plain numbers, so it is
tested on the CPU; `DeviceTimeline` records CUDA events on the compute stream (no host sync while
recording; one `synchronize` when the summary is asked for) and turns them into numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def union_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of the union of ``[start, end)`` intervals (overlaps counted once)."""
    total = 0.0
    cur_start: float | None = None
    cur_end = 0.0
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if cur_start is None or start > cur_end:
            if cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_start is not None:
        total += cur_end - cur_start
    return total


def busy_fraction(intervals: Sequence[tuple[float, float]]) -> float | None:
    """Share of the window from the first start to the last end covered by some interval.

    None when there is no interval with a positive length (nothing ran, or nothing was timed).
    """
    timed = [(s, e) for s, e in intervals if e > s]
    if not timed:
        return None
    window = max(e for _, e in timed) - min(s for s, _ in timed)
    return min(1.0, union_seconds(timed) / window) if window > 0 else None


class _WallEvent:
    """A CPU stand-in for a CUDA timing event (CPU work is done when the call returns)."""

    def __init__(self) -> None:
        self.t = 0.0

    def record(self) -> None:
        import time

        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: _WallEvent) -> float:
        return (other.t - self.t) * 1000.0


@dataclass(frozen=True)
class TimelineSummary:
    """What a device did between its first and its last timed piece of work.

    Attributes:
        busy_fraction: union of timed work / window (None on CPU or when nothing was timed).
        window_s: first start to last end, seconds.
        busy_s: union of the timed work, seconds.
        seconds_by_label: device seconds per label (e.g. ``dnabert-s``, ``esm2``, ``head``).
    """

    busy_fraction: float | None
    window_s: float | None
    busy_s: float | None
    seconds_by_label: dict[str, float] = field(default_factory=dict)


class DeviceTimeline:
    """Records an event pair around each piece of device work on the current stream.

    ``event_factory`` makes events with ``record()``, ``synchronize()`` and
    ``elapsed_time(other) -> ms`` (``torch.cuda.Event(enable_timing=True)`` on CUDA; tests pass
    fakes). ``None`` records nothing and reports None. On the CPU, where work runs synchronously,
    `for_device` uses wall-clock stamps, so per-label seconds are measured there too.
    """

    def __init__(self, event_factory: Callable[[], Any] | None) -> None:
        self._factory = event_factory
        self._marks: list[tuple[str, Any, Any]] = []

    @classmethod
    def for_device(cls, device: Any) -> DeviceTimeline:
        if getattr(device, "type", str(device)) != "cuda":
            return cls(_WallEvent)
        import torch

        return cls(lambda: torch.cuda.Event(enable_timing=True))

    @contextmanager
    def span(self, label: str) -> Iterator[None]:
        """Time the device work issued inside the block (records, never waits)."""
        if self._factory is None:
            yield
            return
        start = self._factory()
        start.record()
        yield
        end = self._factory()
        end.record()
        self._marks.append((label, start, end))

    def summary(self) -> TimelineSummary:
        """Wait for the last recorded event, then measure every span against the first one."""
        if self._factory is None or not self._marks:
            return TimelineSummary(None, None, None, {})
        self._marks[-1][2].synchronize()
        origin = self._marks[0][1]
        intervals: list[tuple[float, float]] = []
        by_label: dict[str, float] = {}
        for label, start, end in self._marks:
            s = origin.elapsed_time(start) / 1000.0
            e = origin.elapsed_time(end) / 1000.0
            intervals.append((s, e))
            by_label[label] = by_label.get(label, 0.0) + max(0.0, e - s)
        window = max(e for _, e in intervals) - min(s for s, _ in intervals)
        return TimelineSummary(busy_fraction(intervals), window, union_seconds(intervals), by_label)


__all__ = ["DeviceTimeline", "TimelineSummary", "busy_fraction", "union_seconds"]
