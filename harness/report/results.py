"""What a run measured and how each scenario ended, gathered while the tests run."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from harness.outcomes import SEVERITY, Status


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
    outcome: Status
    reason: str
    duration_s: float
    figures: dict[str, Any] = field(default_factory=dict)  # what an INCONCLUSIVE or HUNG one measured


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
                if current is None or SEVERITY[outcome.outcome] > SEVERITY[current.outcome]:
                    status[sid] = outcome
        return status

    def metric(self, name: str) -> Metric | None:
        """The latest measurement of `name`."""
        found = [m for m in self.metrics if m.name == name]
        return found[-1] if found else None
