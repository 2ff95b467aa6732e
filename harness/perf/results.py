"""The machine-readable results of perf and soak runs: reports/perf-results.json.

Every perf/soak test records its figures through a ``PerfRecorder``: each figure goes to the run's
``metrics`` (hence the conformance report and its §10 table) and, when the test ends, is merged
into the results file under a file lock (pytest-xdist workers share it). The file keeps the latest
value of every figure with the environment it was measured in (and the latest per mode: a quick
default run never hides the last full -m perf figure), plus per-test details (e.g. the fan-out
table), so docs/BENCHMARKS.md (tools/bench_report.py) can be written from it alone.

Format (version 1)::

    {"format": 1,
     "updated_at": "2026-01-22T12:00:00+00:00",
     "figures": {"get_account_p50_ms": {"value": 0.61, "unit": "ms", "scenario_ids": ["6.1.1.a"],
                                        "test": "specs/perf/test_latency.py::...", "mode": "quick",
                                        "measured_at": "...", "environment": {...}}, ...},
     "by_mode": {"quick": {<figures as above>}, "full": {...}, "soak": {...}},
     "details": {"<test node id>": {"mode": "quick", "measured_at": "...", ...free-form JSON...}}}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

FORMAT = 1
RESULTS_FILE = "perf-results.json"


class MetricSink(Protocol):
    def record(self, name: str, value: float, unit: str = "") -> None: ...


def environment() -> dict[str, Any]:
    """Where a figure was measured: interpreter, grpcio, cores, and how busy the machine was."""
    import grpc

    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        load = []
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "cpus": os.cpu_count() or 1,
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpu_model": _cpu_model(),
        "load_average": load,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load(path: Path) -> dict[str, Any]:
    """The results file's content; an empty document when it does not exist (or is not ours)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"format": FORMAT, "figures": {}, "details": {}}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {"format": FORMAT, "figures": {}, "details": {}}
    data.setdefault("figures", {})
    data.setdefault("by_mode", {})
    data.setdefault("details", {})
    return data


def merge(path: Path, figures: Mapping[str, Mapping[str, Any]], details: Mapping[str, Any]) -> None:
    """Merge figures (latest wins, by name) and per-test details into the file, atomically."""
    with _locked(path):
        data = load(path)
        data.setdefault("by_mode", {})
        data["figures"].update({name: dict(entry) for name, entry in figures.items()})
        for name, entry in figures.items():
            data["by_mode"].setdefault(str(entry.get("mode", "")), {})[name] = dict(entry)
        data["details"].update(details)
        data["updated_at"] = _now()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)


class PerfRecorder:
    """Figures of one perf/soak test: to the run's metrics at once, to the results file at flush()."""

    def __init__(
        self, sink: MetricSink, path: Path, *, test: str, scenario_ids: list[str], mode: str
    ) -> None:
        self.path = path
        self.test = test
        self.scenario_ids = scenario_ids
        self.mode = mode
        self.figures: dict[str, dict[str, Any]] = {}
        self.details: dict[str, Any] = {}
        self._sink = sink
        self._environment = environment()

    def record(self, name: str, value: float, unit: str = "") -> float:
        """Record one figure; returns the value, so a test can assert on what it recorded."""
        self._sink.record(name, value, unit)
        self.figures[name] = {
            "value": float(value),
            "unit": unit,
            "scenario_ids": self.scenario_ids,
            "test": self.test,
            "mode": self.mode,
            "measured_at": _now(),
            "environment": self._environment,
        }
        return float(value)

    def record_ratio(self, name: str, measured: float, baseline: float) -> float:
        """measured / baseline as figure `name` (unit "x"); not recorded when the baseline is zero."""
        if not baseline:
            return float("nan")
        return self.record(name, measured / baseline, "x")

    def detail(self, key: str, value: Any) -> None:
        """Free-form JSON-able detail kept with this test's entry (a table, the pacing, ...)."""
        self.details[key] = value

    def flush(self) -> None:
        if not self.figures and not self.details:
            return
        entry = {"mode": self.mode, "measured_at": _now(), "scenario_ids": self.scenario_ids, **self.details}
        entry["figures"] = sorted(self.figures)
        merge(self.path, self.figures, {self.test: entry})


def latest_figures(path: Path, prefer_mode: str | None = None) -> dict[str, dict[str, Any]]:
    """Every figure in the results file by name ({value, unit, mode, measured_at, ...}), for reports
    that show the last measured value when the current run did not measure it. With `prefer_mode`
    (e.g. "full"), a figure measured in that mode wins over a later one of another mode."""
    data = load(path)
    figures: dict[str, dict[str, Any]] = dict(data["figures"])
    if prefer_mode is not None:
        figures.update(data.get("by_mode", {}).get(prefer_mode, {}))
    return figures
