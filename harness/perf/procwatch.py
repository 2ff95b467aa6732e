"""CPU and memory of a process over a measurement, sampled with psutil on a background thread.

CPU is given the way `top` gives it: 100 % is one core fully busy, so a process using two cores
shows 200 %. The average over the whole run comes from the process's CPU times (user + system)
divided by the wall time, so no sample is missed; the peak is the highest of the sampling
intervals.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    elapsed_s: float
    cpu_avg_pct: float
    cpu_peak_pct: float
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    threads_start: int
    threads_end: int
    threads_peak: int
    fds_start: int
    fds_end: int
    samples: int

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb


class ProcessWatch:
    """Samples one process every `interval` seconds between start() and stop()."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._cpu_start = 0.0
        self._first: tuple[float, int, int] = (0.0, 0, 0)
        self._rss_peak = 0.0
        self._threads_peak = 0
        self._cpu_peak = 0.0
        self._samples = 0

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _sample(self) -> tuple[float, int, int]:
        with self._process.oneshot():
            rss = self._process.memory_info().rss / MB
            threads = self._process.num_threads()
            fds = self._process.num_fds()
        self._rss_peak = max(self._rss_peak, rss)
        self._threads_peak = max(self._threads_peak, threads)
        self._samples += 1
        return rss, threads, fds

    def start(self) -> ProcessWatch:
        self._started_at = time.perf_counter()
        self._cpu_start = self._cpu_seconds()
        self._first = self._sample()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last_wall, last_cpu = time.perf_counter(), self._cpu_seconds()
        while not self._stop.wait(self.interval):
            try:
                self._sample()
                wall, cpu = time.perf_counter(), self._cpu_seconds()
            except psutil.Error:
                return  # the process ended: stop() reports what was seen
            if wall > last_wall:
                self._cpu_peak = max(self._cpu_peak, 100.0 * (cpu - last_cpu) / (wall - last_wall))
            last_wall, last_cpu = wall, cpu

    def stop(self) -> ProcessStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        elapsed = time.perf_counter() - self._started_at
        cpu = self._cpu_seconds() - self._cpu_start
        rss, threads, fds = self._sample()
        average = 100.0 * cpu / elapsed if elapsed > 0 else 0.0
        return ProcessStats(
            pid=self.pid,
            elapsed_s=elapsed,
            cpu_avg_pct=average,
            cpu_peak_pct=max(self._cpu_peak, average),
            rss_start_mb=self._first[0],
            rss_end_mb=rss,
            rss_peak_mb=self._rss_peak,
            threads_start=self._first[1],
            threads_end=threads,
            threads_peak=self._threads_peak,
            fds_start=self._first[2],
            fds_end=fds,
            samples=self._samples,
        )

    def __enter__(self) -> ProcessWatch:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
