"""Probes: resource snapshots for leak checks, latency percentiles, throughput.

Leaks are judged the way the spec judges goroutines: count before, count after, let things
settle, compare with an allowance. Threads, asyncio tasks, open file descriptors and RSS are the
Python analogue. Latencies go into an HdrHistogram (microseconds, 1 µs to 60 s, 3 significant
digits) so percentiles are exact to 0.1 %, never averages.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3


@dataclass(frozen=True)
class ResourceSnapshot:
    """What a process holds at one moment.

    `threads` counts Python threads for this process (threading.enumerate) and OS threads for
    another process; `os_threads` is always the OS count. `tasks` counts the asyncio tasks of the
    running loop when taken inside one (0 otherwise or for another process).
    """

    pid: int
    threads: int
    os_threads: int
    tasks: int
    fds: int
    rss_bytes: int
    thread_names: tuple[str, ...] = ()
    task_names: tuple[str, ...] = ()
    taken_at: float = 0.0

    @classmethod
    def take(cls, pid: int | None = None) -> ResourceSnapshot:
        own = pid is None or pid == os.getpid()
        process = psutil.Process(pid)
        with process.oneshot():
            os_threads = process.num_threads()
            fds = process.num_fds()  # POSIX: the suite runs on Linux
            rss = process.memory_info().rss
        if not own:
            return cls(process.pid, os_threads, os_threads, 0, fds, rss, taken_at=time.monotonic())
        thread_names = tuple(sorted(thread.name for thread in threading.enumerate()))
        task_names = _task_names()
        return cls(
            process.pid, len(thread_names), os_threads, len(task_names), fds, rss,
            thread_names, task_names, time.monotonic(),
        )  # fmt: skip

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / (1024 * 1024)


def _task_names() -> tuple[str, ...]:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return ()
    return tuple(sorted(_describe(task) for task in asyncio.all_tasks(loop)))


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"{task.get_name()} ({name})"


def _growth(
    before: ResourceSnapshot,
    after: ResourceSnapshot,
    threads: int,
    tasks: int,
    fds: int,
    rss_mb: float | None,
) -> list[str]:
    problems = []
    for what, old, new, allowed in (
        ("threads", before.threads, after.threads, threads),
        ("asyncio tasks", before.tasks, after.tasks, tasks),
        ("open fds", before.fds, after.fds, fds),
    ):
        if new - old > allowed:
            problems.append(f"{what} {old} -> {new} (+{new - old}, allowed +{allowed})")
    if rss_mb is not None and after.rss_mb - before.rss_mb > rss_mb:
        grew = after.rss_mb - before.rss_mb
        problems.append(
            f"RSS {before.rss_mb:.1f} MB -> {after.rss_mb:.1f} MB (+{grew:.1f} MB, allowed +{rss_mb} MB)"
        )
    return problems


def _new_names(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    extra = Counter(after) - Counter(before)
    return ", ".join(f"{name} x{count}" if count > 1 else name for name, count in sorted(extra.items()))


def _failure(
    label: str, before: ResourceSnapshot, after: ResourceSnapshot, problems: list[str], waited: float
) -> str:
    prefix = f"{label}: " if label else ""
    text = f"{prefix}resources grew after {waited:.1f} s to settle (pid {after.pid}): " + "; ".join(problems)
    new_threads = _new_names(before.thread_names, after.thread_names)
    new_tasks = _new_names(before.task_names, after.task_names)
    if new_threads:
        text += f"\n  new threads: {new_threads}"
    if new_tasks:
        text += f"\n  new tasks: {new_tasks}"
    return text


def assert_no_growth(
    before: ResourceSnapshot,
    after: ResourceSnapshot,
    *,
    threads: int = 0,
    tasks: int = 0,
    fds: int = 0,
    rss_mb: float | None = None,
    settle_s: float = 5.0,
    label: str = "",
) -> ResourceSnapshot:
    """Fail unless `after` holds at most the allowed growth over `before`.

    While it exceeds the allowance, snapshots of the same process are taken again for up to
    `settle_s` (threads finishing, sockets closing, the garbage collector running). Inside a running
    event loop this blocks the loop, so tasks cannot settle: use `assert_no_growth_async` there.
    Returns the snapshot that passed.
    """
    started = time.monotonic()
    in_loop = _in_running_loop()
    problems = _growth(before, after, threads, tasks, fds, rss_mb)
    while problems and time.monotonic() - started < settle_s:
        gc.collect()
        time.sleep(0.1)
        again = ResourceSnapshot.take(after.pid)
        if in_loop:  # this loop is blocked: its tasks cannot change, keep the count given
            again = _with_tasks(again, after)
        after = again
        problems = _growth(before, after, threads, tasks, fds, rss_mb)
    if problems:
        raise AssertionError(_failure(label, before, after, problems, time.monotonic() - started))
    return after


async def assert_no_growth_async(
    before: ResourceSnapshot,
    after: ResourceSnapshot,
    *,
    threads: int = 0,
    tasks: int = 0,
    fds: int = 0,
    rss_mb: float | None = None,
    settle_s: float = 5.0,
    label: str = "",
) -> ResourceSnapshot:
    """assert_no_growth for async tests: the loop keeps running while things settle."""
    started = time.monotonic()
    problems = _growth(before, after, threads, tasks, fds, rss_mb)
    while problems and time.monotonic() - started < settle_s:
        gc.collect()
        await asyncio.sleep(0.1)
        after = ResourceSnapshot.take(after.pid)
        problems = _growth(before, after, threads, tasks, fds, rss_mb)
    if problems:
        raise AssertionError(_failure(label, before, after, problems, time.monotonic() - started))
    return after


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _with_tasks(snapshot: ResourceSnapshot, source: ResourceSnapshot) -> ResourceSnapshot:
    return ResourceSnapshot(
        snapshot.pid, snapshot.threads, snapshot.os_threads, source.tasks, snapshot.fds, snapshot.rss_bytes,
        snapshot.thread_names, source.task_names, snapshot.taken_at,
    )  # fmt: skip


class LeakProbe:
    """A baseline taken when the test says so, compared with the present when it asks."""

    def __init__(self, pid: int | None = None, label: str = "") -> None:
        self.pid = pid
        self.label = label
        self.baseline: ResourceSnapshot | None = None

    def start(self) -> ResourceSnapshot:
        """Take the baseline (inside the test's loop, so its tasks are counted)."""
        self.baseline = ResourceSnapshot.take(self.pid)
        return self.baseline

    def check(
        self,
        *,
        threads: int = 0,
        tasks: int = 0,
        fds: int = 0,
        rss_mb: float | None = None,
        settle_s: float = 5.0,
    ) -> ResourceSnapshot:
        """assert_no_growth(baseline, now, ...)."""
        return assert_no_growth(
            self._baseline(), ResourceSnapshot.take(self.pid),
            threads=threads, tasks=tasks, fds=fds, rss_mb=rss_mb, settle_s=settle_s, label=self.label,
        )  # fmt: skip

    async def check_async(
        self,
        *,
        threads: int = 0,
        tasks: int = 0,
        fds: int = 0,
        rss_mb: float | None = None,
        settle_s: float = 5.0,
    ) -> ResourceSnapshot:
        """assert_no_growth_async(baseline, now, ...): for async tests."""
        return await assert_no_growth_async(
            self._baseline(), ResourceSnapshot.take(self.pid),
            threads=threads, tasks=tasks, fds=fds, rss_mb=rss_mb, settle_s=settle_s, label=self.label,
        )  # fmt: skip

    def _baseline(self) -> ResourceSnapshot:
        if self.baseline is None:
            raise RuntimeError("leak probe: call start() to take the baseline before check()")
        return self.baseline


PERCENTILE_LADDER = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99)


class LatencyRecorder:
    """Latencies in an HdrHistogram of microseconds (1 µs .. 60 s, 3 significant digits); thread-safe.

    p(q) answers in microseconds, p_ms(q) in milliseconds. Values beyond 60 s are recorded as 60 s
    and counted in `overflows`.
    """

    def __init__(self, name: str = "latency") -> None:
        self.name = name
        self.overflows = 0
        self._histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._lock = threading.Lock()

    def record_us(self, microseconds: float) -> None:
        value = max(LOWEST_US, round(microseconds))
        with self._lock:
            if value > HIGHEST_US:
                self.overflows += 1
                value = HIGHEST_US
            self._histogram.record_value(value)

    def record_ns(self, nanoseconds: int) -> None:
        self.record_us(nanoseconds / 1000)

    def record_s(self, seconds: float) -> None:
        self.record_us(seconds * 1_000_000)

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Record how long the `with` block took."""
        started = time.perf_counter_ns()
        try:
            yield
        finally:
            self.record_ns(time.perf_counter_ns() - started)

    @property
    def count(self) -> int:
        with self._lock:
            return int(self._histogram.get_total_count())

    def p(self, percentile: float) -> int:
        """The latency at `percentile` (e.g. 50, 99, 99.9), in microseconds."""
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be within 0..100, got {percentile}")
        with self._lock:
            if self._histogram.get_total_count() == 0:
                raise ValueError(f"{self.name}: no latency recorded, so there is no p{percentile:g}")
            return int(self._histogram.get_value_at_percentile(percentile))

    def p_ms(self, percentile: float) -> float:
        """The latency at `percentile`, in milliseconds."""
        return self.p(percentile) / 1000

    @property
    def max_us(self) -> int:
        with self._lock:
            return int(self._histogram.get_max_value())

    @property
    def mean_us(self) -> float:
        with self._lock:
            return float(self._histogram.get_mean_value())

    def merge(self, other: LatencyRecorder) -> None:
        """Add every value of `other` to this recorder."""
        with other._lock:
            encoded = other._histogram.encode()
            overflows = other.overflows
        with self._lock:
            self._histogram.decode_and_add(encoded)
            self.overflows += overflows

    def percentile_points(self) -> list[list[float]]:
        """[percentile, ms] along an HDR ladder (0 to 99.99 and the maximum), for a percentile plot."""
        if not self.count:
            return []
        return [[q, self.p_ms(q)] for q in PERCENTILE_LADDER] + [[100.0, self.max_us / 1000]]

    def summary_ms(self) -> dict[str, float]:
        """count, p50, p90, p99, p99.9 and max, in milliseconds, for reports."""
        return {
            "count": float(self.count),
            **{f"p{q:g}": self.p_ms(q) for q in (50, 90, 99, 99.9)},
            "max": self.max_us / 1000,
        }

    def __str__(self) -> str:
        if self.count == 0:
            return f"{self.name}: no samples"
        return (
            f"{self.name}: n={self.count} p50={self.p_ms(50):.3f} ms p99={self.p_ms(99):.3f} ms "
            f"p99.9={self.p_ms(99.9):.3f} ms max={self.max_us / 1000:.3f} ms"
        )


class Throughput:
    """Counts events and the time they took: `rate` is events per second; thread-safe.

    The clock starts at start() or at the first add(), and stops at stop() (or reads now).
    """

    def __init__(self, name: str = "throughput") -> None:
        self.name = name
        self._count = 0
        self._started: float | None = None
        self._stopped: float | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._started, self._stopped, self._count = time.perf_counter(), None, 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            if self._started is None:
                self._started = time.perf_counter()
            self._count += n

    def stop(self) -> None:
        with self._lock:
            if self._stopped is None:
                self._stopped = time.perf_counter()

    @property
    def count(self) -> int:
        return self._count

    @property
    def elapsed_s(self) -> float:
        with self._lock:
            if self._started is None:
                return 0.0
            end = self._stopped if self._stopped is not None else time.perf_counter()
            return end - self._started

    @property
    def rate(self) -> float:
        """Events per second; 0.0 before any time has passed."""
        elapsed = self.elapsed_s
        return self._count / elapsed if elapsed > 0 else 0.0

    def __str__(self) -> str:
        return f"{self.name}: {self._count} in {self.elapsed_s:.3f} s = {self.rate:.1f}/s"
