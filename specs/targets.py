"""A scenario's target check, for the timed sections (§6, §7): the verdict of one ID is whether
its measured figure holds its target; a failure says what was expected and what was got. A target
of a timing-bounded scenario (`timing: true` in the catalogue: latencies, rates, CPU) is a time
bound a starved host can break too, so its miss is a TimingMiss (harness.timing judges the host)."""

from __future__ import annotations

from harness import catalogue
from harness.outcomes import TimingMiss
from harness.verdicts import Verdicts


def check_target(verdicts: Verdicts, scenario_id: str, holds: bool, expected: str, got: str) -> None:
    scenario = catalogue.load().get(scenario_id)
    miss = TimingMiss if scenario is not None and scenario.timing else AssertionError
    with verdicts.check(scenario_id):
        if not holds:
            raise miss(f"expected {expected}, got {got}")


__all__ = ["check_target"]
