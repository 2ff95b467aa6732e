"""How steadily this machine runs plain CPU work: the floor under every latency tail measured on it.

A fixed piece of pure-Python work, calibrated to take about a millisecond, is timed over and over
with short pauses in between, while nothing else of the suite runs. On a steady machine every
repetition takes about as long as the calibration; on a virtual machine whose host takes its CPUs
away now and then, some repetitions take many times longer, and no program on it can deliver a
tail latency below those stalls. The figures go next to the latency results so a failing p99 can be
read against what the machine alone does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

UNIT_ITERATIONS_START = 2_000


@dataclass(frozen=True)
class SteadinessReport:
    unit_ms: float  # what one piece of work takes when the machine is steady (median of calibration)
    runs: int
    p99_ms: float
    max_ms: float
    slow_runs: int  # repetitions that took more than SLOW_FACTOR times the unit
    duration_s: float

    SLOW_FACTOR = 3.0

    def describe(self) -> str:
        return (
            f"a {self.unit_ms:.2f} ms piece of CPU work took up to {self.max_ms:.1f} ms "
            f"(p99 {self.p99_ms:.1f} ms; {self.slow_runs} of {self.runs} runs over "
            f"{self.SLOW_FACTOR:.0f}x) in a {self.duration_s:.0f} s probe of the idle machine"
        )


def _work(iterations: int) -> int:
    total = 0
    for value in range(iterations):
        total += value * value
    return total


def _timed(iterations: int) -> float:
    started = time.perf_counter()
    _work(iterations)
    return time.perf_counter() - started


def _calibrate(target_s: float) -> tuple[int, float]:
    """Iterations that take about target_s, and the median time they take."""
    iterations = UNIT_ITERATIONS_START
    while _timed(iterations) < target_s:
        iterations *= 2
    iterations = max(1, int(iterations * target_s / _timed(iterations)))
    return iterations, statistics.median(_timed(iterations) for _ in range(21))


def probe_steadiness(
    duration_s: float = 5.0, unit_s: float = 0.001, pause_s: float = 0.002
) -> SteadinessReport:
    """Time a ~unit_s piece of CPU work repeatedly for duration_s (blocking)."""
    iterations, unit = _calibrate(unit_s)
    samples: list[float] = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        samples.append(_timed(iterations))
        time.sleep(pause_s)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
    slow = sum(1 for sample in samples if sample > SteadinessReport.SLOW_FACTOR * unit)
    return SteadinessReport(
        unit_ms=unit * 1000,
        runs=len(samples),
        p99_ms=p99 * 1000,
        max_ms=samples[-1] * 1000,
        slow_runs=slow,
        duration_s=duration_s,
    )
