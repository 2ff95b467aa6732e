"""How steady the host was while a timing-bounded scenario ran, measured beside it.

A timing bound missed on a host that other work was starving says nothing about the
implementation. So while such a scenario runs, the harness records:

* the scheduling delay of a sampler: a small process of its own that sleeps 10 ms at a time and
  notes how late it wakes (a stalled host wakes it late; so does a test whose own work fills every
  core, which is why a late wake-up counts only while the test left CPU free);
* the CPU that processes outside this test took meanwhile (the whole host's busy time from
  /proc/stat less this process and its children: the programs under test, the harness's own
  client processes), in cores;
* CPU steal (a virtual machine whose host took its CPUs away) and the load average.

`steady()` says whether those stayed within the bounds below; harness.timing decides with it
whether a missed bound is retried, FAILS, or is INCONCLUSIVE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import psutil

# A host is steady while it stays within all of these.
MAX_FOREIGN_CORES = 0.35  # CPU taken by processes outside the test, in cores
MAX_STEAL_PCT = 5.0
MAX_SCHED_DELAY_MS = 150.0  # the sampler's worst wake-up delay
SAMPLE_S = 0.01
CPUS = os.cpu_count() or 1
SATURATED_SHARE = 0.8  # the test's own CPU, as a share of all cores, past which it fills the host

# The sampler: sleeps SAMPLE_S at a time until its stdin closes, then prints its delays.
SAMPLER = """
import json, sys, threading, time
delays = []
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
step = float(sys.argv[1])
while not stop.is_set():
    started = time.monotonic()
    time.sleep(step)
    delays.append(time.monotonic() - started - step)
delays.sort()
pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] * 1000 if delays else 0.0
print(json.dumps({"samples": len(delays), "max_ms": pick(1.0), "p99_ms": pick(0.99)}), flush=True)
"""


@dataclass(frozen=True)
class HostFigures:
    duration_s: float
    sched_delay_max_ms: float
    sched_delay_p99_ms: float
    foreign_cpu_cores: float
    steal_pct: float
    load1: float
    own_cpu_s: float = 0.0  # CPU this process and its children used meanwhile (the test's own work)

    def steady(self) -> bool:
        return not self.unsteady_because()

    def unsteady_because(self) -> list[str]:
        """Which bound the host broke, in words (empty on a steady host)."""
        found = []
        if self.foreign_cpu_cores > MAX_FOREIGN_CORES:
            found.append(
                f"other processes took {self.foreign_cpu_cores:.2f} cores (bound {MAX_FOREIGN_CORES:g})"
            )
        if self.steal_pct > MAX_STEAL_PCT:
            found.append(f"CPU steal {self.steal_pct:.1f} % (bound {MAX_STEAL_PCT:g} %)")
        # the test's own work can fill every core and wake the sampler late: only a late wake-up
        # while the test left CPU free says the host stood still
        saturated = self.own_cpu_s / max(self.duration_s, 1e-3) >= SATURATED_SHARE * CPUS
        if self.sched_delay_max_ms > MAX_SCHED_DELAY_MS and not saturated:
            found.append(
                f"a sampler woke {self.sched_delay_max_ms:.0f} ms late (bound {MAX_SCHED_DELAY_MS:g} ms)"
            )
        return found

    def as_dict(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class _CpuTimes:
    busy_s: float
    steal_s: float
    total_s: float


def _host_cpu() -> _CpuTimes:
    """The whole host's CPU seconds (all cores) from /proc/stat: busy, steal and total."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return _CpuTimes(busy / hz, steal / hz, (busy + idle + iowait + steal) / hz)


def _own_cpu() -> float:
    """CPU seconds of this process, its finished children and its live descendants."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        total += child_times.user + child_times.system
    return total


class HostWatch:
    """Measures the host around a block: `with HostWatch() as watch: ...; watch.figures`."""

    def __init__(self) -> None:
        self._sampler: subprocess.Popen[str] | None = None
        self._started = 0.0
        self._cpu = _CpuTimes(0.0, 0.0, 0.0)
        self._own = 0.0
        self.figures: HostFigures | None = None

    def __enter__(self) -> HostWatch:
        self._sampler = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(SAMPLE_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._started = time.monotonic()
        self._cpu = _host_cpu()
        self._own = _own_cpu()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.figures = self.stop()

    def stop(self) -> HostFigures:
        elapsed = max(time.monotonic() - self._started, 1e-3)
        cpu, own = _host_cpu(), _own_cpu()
        delays = self._sampler_figures()
        busy = cpu.busy_s - self._cpu.busy_s
        total = max(cpu.total_s - self._cpu.total_s, 1e-3)
        # the sampler is this process's child, so its little CPU counts as the test's own
        foreign = max(0.0, busy - (own - self._own)) / elapsed
        return HostFigures(
            duration_s=elapsed,
            sched_delay_max_ms=delays.get("max_ms", 0.0),
            sched_delay_p99_ms=delays.get("p99_ms", 0.0),
            foreign_cpu_cores=foreign,
            steal_pct=100.0 * (cpu.steal_s - self._cpu.steal_s) / total,
            load1=os.getloadavg()[0],
            own_cpu_s=own - self._own,
        )

    def _sampler_figures(self) -> dict[str, float]:
        sampler, self._sampler = self._sampler, None
        if sampler is None:
            return {}
        try:
            out, _ = sampler.communicate("", timeout=5.0)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.communicate()
            return {}
        lines = out.strip().splitlines()
        return {key: float(value) for key, value in json.loads(lines[-1]).items()} if lines else {}


__all__ = ["HostFigures", "HostWatch"]
