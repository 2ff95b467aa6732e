"""A hang is contained: each test runs within its scenarios' time budget, and one that runs past it
ends HUNG (harness.outcomes), its programs killed by their fixtures' teardown, not FAILED.

The budget is the catalogue's `time_budget_s` (the largest of the test's IDs; times the attempts
of a timing-bounded test), or --time-budget for every scenario; a test's own longer timeout mark
stands; --attach sets none (a debugger holds a scenario as long as it likes). pytest-timeout enforces it (its signal method: the test is interrupted where it waits, and
its fixtures tear down as after any failure, so the programs it started are stopped or killed).
"""

from __future__ import annotations

import json

import pytest

from harness import catalogue as catalogue_module
from harness.markers import scenario_ids
from harness.outcomes import HUNG_KEY
from harness.timing import MAX_ATTEMPTS, is_timing_bounded

BUDGET_KEY = pytest.StashKey[float]()
HUNG_ITEM_KEY = pytest.StashKey[bool]()  # on an item: its call ran past the budget
TIMEOUT_MARK = "from pytest-timeout"


def item_budget_s(item: pytest.Item, chosen: float | None) -> float | None:
    """The test's time budget: None for a test with no scenario (the project's own tests)."""
    catalogue = catalogue_module.load()
    scenarios = [s for sid in scenario_ids(item) if (s := catalogue.get(sid)) is not None]
    if not scenarios:
        return None
    budget = chosen if chosen is not None else max(s.time_budget_s for s in scenarios)
    return budget * MAX_ATTEMPTS if is_timing_bounded(item) and chosen is None else budget


def apply_budgets(items: list[pytest.Item], config: pytest.Config) -> None:
    chosen = config.getoption("time_budget")
    if config.getoption("attach") and chosen is None:
        # a debugger may hold a scenario at a breakpoint as long as it likes: no budget unless asked
        for item in items:
            item.add_marker(pytest.mark.timeout(0), append=False)
        return
    for item in items:
        budget = item_budget_s(item, chosen)
        if budget is None:
            continue
        own = item.get_closest_marker("timeout")
        if chosen is None and own is not None and own.args and float(own.args[0]) > budget:
            budget = float(own.args[0])  # the test's own longer bound (a long benchmark) stands
        item.stash[BUDGET_KEY] = budget
        item.add_marker(pytest.mark.timeout(budget), append=False)


def ran_past_budget(call: pytest.CallInfo[None]) -> bool:
    return call.excinfo is not None and TIMEOUT_MARK in str(call.excinfo.value)


def mark_hung(item: pytest.Item, report: pytest.TestReport) -> None:
    """The test ran past its budget (in its set-up, call or tear-down): HUNG, with what the run has
    of it so far."""
    budget = item.stash.get(BUDGET_KEY, 0.0)
    item.stash[HUNG_ITEM_KEY] = True
    figures: dict[str, object] = {"budget_s": budget}
    for title, text in report.sections:
        if title in ("program logs", "client driver", "gRPC trace"):
            figures[title] = text
    where = {"setup": " while setting up", "teardown": " while tearing down"}.get(report.when, "")
    reason = f"ran past its time budget of {budget:g} s{where}; its programs were stopped or killed"
    report.user_properties.append((HUNG_KEY, json.dumps({"reason": reason, "figures": figures}, default=str)))


def after_hang(item: pytest.Item, report: pytest.TestReport) -> None:
    """A teardown after a hang: what it could not clean up goes with the HUNG outcome, not as an ERROR
    on top of it."""
    if report.when == "teardown" and report.failed and item.stash.get(HUNG_ITEM_KEY, False):
        report.sections.append(("teardown after the hang", report.longreprtext))
        report.outcome = "passed"
        report.longrepr = None


__all__ = ["after_hang", "apply_budgets", "item_budget_s", "mark_hung", "ran_past_budget"]
