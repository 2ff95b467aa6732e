"""Timing-bounded scenarios: the host is measured beside them, and a bound missed while the host
stalled is retried, then INCONCLUSIVE, never FAIL.

A scenario whose catalogue entry says `timing: true` runs under a HostWatch. Its test marks the
assertions that a starved host can break by raising TimingMiss (see `within`); any other failure
(a lost or reordered update, a wrong status, a leak that grows with the work) is plainly the
implementation's and FAILS at once. When an attempt ends in a timing miss:

* on a steady host, the FAIL stands: the implementation missed its bound with the CPU to meet it;
* on an unsteady host, the scenario runs again, at most MAX_ATTEMPTS times in all; a later attempt
  that passes (on any host) passes; when every attempt missed on an unsteady host, the outcome is
  INCONCLUSIVE with every attempt's host figures.

A test that raises Inconclusive itself (its own clients could not read what it offered) is run
again the same way, on any host; it stays INCONCLUSIVE when no attempt could measure.

The host figures of every attempt go on the report (user property "host") either way.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from harness import catalogue as catalogue_module
from harness.host_watch import HostFigures, HostWatch
from harness.markers import scenario_ids
from harness.outcomes import (
    CHECK_KEY,
    HOST_KEY,
    INCONCLUSIVE_KEY,
    ONLY_CHECKS_FAILED,
    TIMING_MISS_KEY,
    Inconclusive,
    Status,
)

MAX_ATTEMPTS = 3
RERUN_ADVICE = "the host could not measure this; rerun on a quieter machine"


def is_timing_bounded(item: pytest.Item) -> bool:
    catalogue = catalogue_module.load()
    return any((s := catalogue.get(sid)) is not None and s.timing for sid in scenario_ids(item))


def run_with_host_watch(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """pytest_runtest_protocol for a timing-bounded test: attempts, each under a HostWatch; only
    the last attempt's reports are logged."""
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    first_properties = list(item.user_properties)
    attempts: list[dict[str, Any]] = []
    reports: list[pytest.TestReport] = []
    miss: str | None = None
    unmeasured = False
    figures: HostFigures | None = None
    for number in range(1, MAX_ATTEMPTS + 1):
        item.user_properties[:] = first_properties
        with HostWatch() as watch:
            # each attempt sets the test up and tears it down whole, as if it ran once (module
            # fixtures the next test does not share are built again for another attempt)
            reports = runtestprotocol(item, log=False, nextitem=nextitem)
        figures = watch.figures
        assert figures is not None
        miss, unmeasured = _timing_miss(reports), _unmeasured(reports)
        attempts.append({"attempt": number, "timing_miss": miss is not None, **figures.as_dict()})
        if miss is None or (figures.steady() and not unmeasured):
            break
    if miss is not None and figures is not None and not figures.steady() and not unmeasured:
        _inconclusive(reports, miss, figures, len(attempts))
    for report in reports:
        if report.when == "call":
            report.user_properties.append((HOST_KEY, json.dumps(attempts)))
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _timing_miss(reports: list[pytest.TestReport]) -> str | None:
    """The message of a timing miss that alone failed the attempt (or of a measurement the harness
    could not make: another attempt may), or None (it passed, or failed for a reason a host cannot
    cause)."""
    call = next((r for r in reports if r.when == "call"), None)
    unmeasured = [
        str(v) for k, v in (call.user_properties if call is not None else ()) if k == INCONCLUSIVE_KEY
    ]
    if unmeasured:
        return str(json.loads(unmeasured[0])["reason"])
    if call is None or not call.failed or any(r.failed for r in reports if r.when != "call"):
        return None
    props = [(str(k), v) for k, v in call.user_properties]
    whole = [str(v) for k, v in props if k == TIMING_MISS_KEY]
    if whole:
        return whole[0]
    if not any(k == ONLY_CHECKS_FAILED for k, _ in props):
        return None
    failed = [json.loads(str(v)) for k, v in props if k == CHECK_KEY]
    failed = [record for record in failed if record["status"] == Status.FAILED]
    if failed and all(record.get("timing_miss") for record in failed):
        return "; ".join(f"{record['id']}: {record['reason']}" for record in failed)
    return None


def _unmeasured(reports: list[pytest.TestReport]) -> bool:
    """The test itself said INCONCLUSIVE (the harness could not measure), host or no host."""
    return any(k == INCONCLUSIVE_KEY for r in reports if r.when == "call" for k, _ in r.user_properties)


def _inconclusive(reports: list[pytest.TestReport], miss: str, figures: HostFigures, attempts: int) -> None:
    call = next(r for r in reports if r.when == "call")
    why = "; ".join(figures.unsteady_because())
    message = f"{RERUN_ADVICE} ({why}); after {attempts} attempt(s) the last missed: {miss}"
    # every attempt's host figures go on the report under HOST_KEY, beside this
    unmeasured = Inconclusive(message)
    call.outcome = "skipped"
    call.longrepr = (str(call.location[0]), call.location[1] or 0, f"INCONCLUSIVE: {message}")
    # per-ID checks that missed a bound become INCONCLUSIVE too; the rest keep their own outcome
    rewritten: list[tuple[str, object]] = []
    for key, value in call.user_properties:
        if key == CHECK_KEY:
            record = json.loads(str(value))
            if record["status"] == Status.FAILED and record.get("timing_miss"):
                record.update(status=Status.INCONCLUSIVE.value, reason=f"{RERUN_ADVICE}: {record['reason']}")
                value = json.dumps(record)
        rewritten.append((key, value))
    rewritten.append((INCONCLUSIVE_KEY, unmeasured.to_json()))
    call.user_properties = rewritten


__all__ = ["MAX_ATTEMPTS", "is_timing_bounded", "run_with_host_watch"]
