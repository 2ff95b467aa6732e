"""What a run measured and how each scenario ended, gathered while the tests run."""

from __future__ import annotations

import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.catalogue import Catalogue

# the order in which a scenario's test outcomes win when several tests name the same ID
_SEVERITY = {"failed": 5, "error": 5, "known-failure": 4, "passed": 3, "not-applicable": 2, "skipped": 1}


@dataclass
class Metric:
    name: str
    value: float
    unit: str
    scenario_ids: list[str]
    nodeid: str


@dataclass
class TestOutcome:
    nodeid: str
    scenario_ids: list[str]
    outcome: str  # passed | failed | error | skipped | not-applicable | known-failure
    reason: str
    duration_s: float


@dataclass
class RunResults:
    started_at: float = field(default_factory=time.time)
    sut_name: str = "reference"
    sut_digest: str = ""
    outcomes: list[TestOutcome] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_outcome(self, outcome: TestOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def add_metric(self, metric: Metric) -> None:
        with self._lock:
            self.metrics.append(metric)

    def scenario_status(self) -> dict[str, TestOutcome]:
        """The deciding outcome of each scenario ID that ran (a failure beats a pass)."""
        status: dict[str, TestOutcome] = {}
        for outcome in self.outcomes:
            for sid in outcome.scenario_ids:
                current = status.get(sid)
                if current is None or _SEVERITY[outcome.outcome] > _SEVERITY[current.outcome]:
                    status[sid] = outcome
        return status

    def metric(self, name: str) -> Metric | None:
        """The latest measurement of `name`."""
        found = [m for m in self.metrics if m.name == name]
        return found[-1] if found else None

    def to_json(self, catalogue: Catalogue) -> dict[str, Any]:
        import grpc

        status = self.scenario_status()
        scenarios = []
        for scenario in catalogue.scenarios:
            ran = status.get(scenario.id)
            scenarios.append(
                {
                    "id": scenario.id,
                    "section": scenario.section,
                    "level": scenario.level,
                    "kind": scenario.kind,
                    "title": scenario.title,
                    "status": ran.outcome if ran else ("pending" if scenario.pending else "not-run"),
                    "reason": ran.reason if ran else "",
                    "duration_s": round(ran.duration_s, 3) if ran else None,
                    "tests": [o.nodeid for o in self.outcomes if scenario.id in o.scenario_ids],
                }
            )
        return {
            "spec": catalogue.spec,
            "sut": {"name": self.sut_name, "manifest_sha256": self.sut_digest},
            "environment": {
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "machine": platform.machine(),
                "system": platform.platform(),
                "cpus": _cpu_count(),
            },
            "started_at": self.started_at,
            "duration_s": round(time.time() - self.started_at, 3),
            "scenarios": scenarios,
            "metrics": [asdict(m) for m in self.metrics],
            "tests": [asdict(o) for o in self.outcomes],
        }

    def write_json(self, path: Path, catalogue: Catalogue) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(catalogue), indent=2), encoding="utf-8")
        tmp.replace(path)


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
