"""Client-side measuring primitives shared by every benchmark, for the bare baseline and the SUT alike.

How an update is recognised and timed end to end:

* Each measured update carries its run number and sequence number in a decimal field, as
  ``"<run>.<seq:09d>"`` (``Account.total_balance``, ``Position.size``). That is a valid decimal
  string, so a connector that validates its data forwards it unchanged; a message without a tag of
  the current run (the connector's own first snapshot, a priming update) is counted apart and never
  mistaken for a measured one. Reading pads the fraction back to nine digits, so even a connector
  that dropped trailing zeros would still be read correctly.
* The send time travels in ``Account.updated_at``, stamped from the wall clock (``time.time_ns``)
  just before the update leaves the generator (the bare baseline's stream loop, or the thread
  triggering the harness's mock exchange). The receiver subtracts it from its own ``time.time_ns``.
  Every process on the host reads the same CLOCK_REALTIME, so this works across processes; NTP only
  slews it by at most 0.5 µs per ms, which is negligible next to the figures measured.
* Loss, duplicates and reordering are judged per subscriber from the sequence numbers
  (``SequenceTracker``), never inferred from counts alone.

Percentiles come from HdrHistograms (``harness.perf.probes.LatencyRecorder``), never from averages.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from harness.perf.probes import LatencyRecorder
from harness.tagged_updates import Schedule

# --------------------------------------------------------------------------------------- sequences


class SequenceTracker:
    """Loss, duplicate and reorder detection for one subscriber's sequence numbers.

    With `first` given, the subscriber must see every number from `first` on; with first=None it
    joined mid-stream and the first number it sees starts its range. A bitmap remembers what was
    seen, so memory stays at one bit per number even over a long soak.
    """

    def __init__(self, first: int | None = 1) -> None:
        self.first = first
        self.received = 0  # distinct numbers seen within the range
        self.duplicates = 0
        self.reordered = 0  # arrived after a higher number
        self.before_range = 0  # lower than `first` (only when joining mid-stream)
        self.highest: int | None = None
        self._seen = bytearray()

    def observe(self, seq: int) -> None:
        if self.first is None:
            self.first = seq
        if seq < self.first:
            self.before_range += 1
            return
        offset = seq - self.first
        byte, bit = divmod(offset, 8)
        if byte >= len(self._seen):
            self._seen.extend(bytes(max(byte + 1 - len(self._seen), len(self._seen) // 2, 64)))
        if self._seen[byte] & (1 << bit):
            self.duplicates += 1
            return
        self._seen[byte] |= 1 << bit
        self.received += 1
        if self.highest is not None and seq < self.highest:
            self.reordered += 1
        if self.highest is None or seq > self.highest:
            self.highest = seq

    def lost(self, last: int | None = None) -> int:
        """Numbers from `first` to `last` (default: the highest seen) that never arrived."""
        if self.first is None:
            return 0  # nothing seen yet: where the range starts is unknown (callers check `received`)
        end = self.highest if last is None else last
        if end is None or end < self.first:
            return 0
        expected = end - self.first + 1
        return expected - self._count_seen_until(end)

    def missing(self, last: int | None = None, limit: int = 10) -> list[int]:
        """Up to `limit` of the numbers lost() counts, lowest first (for failure messages)."""
        if self.first is None:
            return []
        end = self.highest if last is None else last
        found: list[int] = []
        if end is None:
            return found
        for seq in range(self.first, end + 1):
            if not self.seen(seq):
                found.append(seq)
                if len(found) >= limit:
                    break
        return found

    def seen(self, seq: int) -> bool:
        if self.first is None or seq < self.first:
            return False
        byte, bit = divmod(seq - self.first, 8)
        return byte < len(self._seen) and bool(self._seen[byte] & (1 << bit))

    def _count_seen_until(self, end: int) -> int:
        if self.highest is not None and end >= self.highest:
            return self.received
        assert self.first is not None
        return sum(1 for seq in range(self.first, end + 1) if self.seen(seq))

    @property
    def in_order(self) -> bool:
        return self.reordered == 0 and self.duplicates == 0


# --------------------------------------------------------------------------------------- pacing


@dataclass(frozen=True)
class PacingReport:
    sent: int
    elapsed_s: float
    max_lag_s: float  # how far the generator itself ever fell behind its schedule

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run_paced(
    send: Callable[[int], object],
    *,
    rate: float,
    count: int,
    first: int = 1,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
) -> PacingReport:
    """Call send(seq) for seq = first .. first+count-1 on the schedule of `rate` per second (blocking).

    Whatever is due is sent in one go, so a late wake-up never slows the overall rate down.
    """
    schedule = Schedule(rate)
    started = clock()
    sent = 0
    max_lag = 0.0
    while sent < count and not (stop is not None and stop.is_set()):
        elapsed = clock() - started
        due = min(count, schedule.due_by(elapsed))
        if due > sent:
            max_lag = max(max_lag, elapsed - schedule.due_at(sent + 1))
            for index in range(sent, due):
                send(first + index)
            sent = due
            continue
        sleep(max(0.0, schedule.due_at(sent + 1) - (clock() - started)))
    return PacingReport(sent, clock() - started, max_lag)


class Window(Protocol):
    """A semaphore: threading's, or multiprocessing's when the receiver is another process."""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...

    def release(self) -> None: ...


def run_windowed(
    send: Callable[[int], object],
    *,
    count: int,
    window: Window,
    first: int = 1,
    stop: threading.Event | None = None,
    timeout: float = 10.0,
) -> PacingReport:
    """Send as fast as the receiver keeps up: at most the window's worth of updates in flight.

    The receiver releases `window` once per update it got; when nothing is released for `timeout`
    seconds the generator gives up (the receiver then reports what is missing). This measures the rate the whole path
    can sustain without piling updates into a queue (where a bounded subscriber queue would drop the
    subscriber, and an unbounded one would measure the generator instead of the server).
    """
    started = time.perf_counter()
    sent = 0
    waited_since: float | None = None
    while sent < count and not (stop is not None and stop.is_set()):
        if not window.acquire(timeout=0.1):
            waited_since = waited_since or time.perf_counter()
            if time.perf_counter() - waited_since > timeout:
                break  # nothing arrives any more: the receiver reports what is missing
            continue
        waited_since = None
        send(first + sent)
        sent += 1
    return PacingReport(sent, time.perf_counter() - started, 0.0)


# --------------------------------------------------------------------------------------- unary calls


def measure_unary(
    calls: Mapping[str, Callable[[], object]],
    *,
    count: int,
    warmup: int,
    block: int = 500,
) -> dict[str, LatencyRecorder]:
    """The latency of each named call, measured in interleaved blocks of `block` calls.

    Interleaving (a block of the baseline, a block of the SUT, ...) exposes every target to the same
    machine conditions, which matters on a shared machine. The first `warmup` calls of each target
    (channel set-up, first-call allocations) are not recorded.
    """
    recorders = {name: LatencyRecorder(name) for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    done = 0
    while done < count:
        size = min(block, count - done)
        for name, call in calls.items():
            _timed_block(call, size, recorders[name])
        done += size
    return recorders


def _timed_block(call: Callable[[], object], size: int, recorder: LatencyRecorder) -> None:
    clock = time.perf_counter_ns
    samples: list[int] = []
    for _ in range(size):
        started = clock()
        call()
        samples.append(clock() - started)
    for sample in samples:  # recorded afterwards: the histogram's lock stays out of the timed loop
        recorder.record_ns(sample)


def ratio(measured: float, baseline: float) -> float:
    """measured / baseline; inf when the baseline is zero."""
    return measured / baseline if baseline else math.inf


def merged(recorders: Iterable[LatencyRecorder], name: str = "merged") -> LatencyRecorder:
    total = LatencyRecorder(name)
    for recorder in recorders:
        total.merge(recorder)
    return total
