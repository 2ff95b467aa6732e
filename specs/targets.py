"""A scenario's target check, for the timed sections (§6, §7): the verdict of one ID is whether
its measured figure holds its target; a failure says what was expected and what was got. A target
of a timing-bounded scenario (`timing: true` in the catalogue: latencies, rates, CPU) is a time
bound a starved host can break too, so its miss is a TimingMiss (harness.timing judges the host),
unless the caller shows the host could measure it (`host_met_it`): then the miss stands on any
host."""

from __future__ import annotations

from harness import catalogue
from harness.outcomes import TimingMiss
from harness.verdicts import Verdicts


def check_target(
    verdicts: Verdicts, scenario_id: str, holds: bool, expected: str, got: str, *, host_met_it: str = ""
) -> None:
    """`host_met_it`: why this host plainly could measure the target, e.g. a bare baseline met it in
    the same run while the implementation missed it by far; a miss is then a plain failure."""
    scenario = catalogue.load().get(scenario_id)
    timed = scenario is not None and scenario.timing
    with verdicts.check(scenario_id):
        if holds:
            return
        if timed and not host_met_it:
            raise TimingMiss(f"expected {expected}, got {got}")
        raise AssertionError(f"expected {expected}, got {got}" + (f" ({host_met_it})" if host_met_it else ""))


__all__ = ["check_target"]
