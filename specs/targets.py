"""A scenario's target check, for the timed sections (§6, §7): the verdict of one ID is whether
its measured figure holds its target; a failure says what was expected and what was got."""

from __future__ import annotations

from harness.verdicts import Verdicts


def check_target(verdicts: Verdicts, scenario_id: str, holds: bool, expected: str, got: str) -> None:
    with verdicts.check(scenario_id):
        if not holds:
            raise AssertionError(f"expected {expected}, got {got}")


__all__ = ["check_target"]
