"""The outcome model: how a scenario ended, decided in one place.

Every hook, the recorder, the per-ID checks (harness.verdicts) and every report read this module;
none of them re-derives an outcome from strings. A test reports through pytest, and what pytest
cannot say (which capability is unclaimed, that the host could not measure) travels beside the
report as a typed user property, never as a prefix of a message.

    PASSED           the implementation met the scenario
    FAILED           it did not (ERROR: the test broke in set-up or tear-down)
    KNOWN_FAILURE    failed, and the manifest lists it with a reason
    STALE            listed as a known failure, but passed: the list is out of date (fails the run)
    NOT_APPLICABLE   the SUT does not claim a capability the scenario needs, or a mode (attach)
                     cannot run it
    SKIPPED          an environment limit of this host (no Docker engine), named
    INCONCLUSIVE     the host or the harness could not measure; the figures say why
    HUNG             ran past its time budget; its programs were killed
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    KNOWN_FAILURE = "known-failure"
    STALE = "stale-known-failure"
    NOT_APPLICABLE = "not-applicable"
    SKIPPED = "skipped"
    INCONCLUSIVE = "inconclusive"
    HUNG = "hung"

    def __str__(self) -> str:  # the value, as reports and JSON write it
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def label(self) -> str:
        return LABELS[self]

    @property
    def is_failure(self) -> bool:
        """A verdict against the implementation (or a stale list): the run fails."""
        return self in FAILING

    @property
    def passed_or_excused(self) -> bool:
        """Nothing to rerun: passed, a listed known failure, not applicable or an environment skip."""
        return self in (Status.PASSED, Status.KNOWN_FAILURE, Status.NOT_APPLICABLE, Status.SKIPPED)


LABELS = {
    Status.PASSED: "PASS",
    Status.FAILED: "FAIL",
    Status.ERROR: "ERROR",
    Status.KNOWN_FAILURE: "KNOWN",
    Status.STALE: "STALE",
    Status.NOT_APPLICABLE: "N/A",
    Status.SKIPPED: "SKIP",
    Status.INCONCLUSIVE: "INCONCLUSIVE",
    Status.HUNG: "HUNG",
}
FAILING = frozenset({Status.FAILED, Status.ERROR, Status.STALE, Status.HUNG})
# Which outcome wins when several tests (or phases) name the same scenario ID.
SEVERITY = {
    Status.FAILED: 6,
    Status.ERROR: 6,
    Status.STALE: 6,
    Status.HUNG: 6,
    Status.INCONCLUSIVE: 5,
    Status.KNOWN_FAILURE: 4,
    Status.PASSED: 3,
    Status.NOT_APPLICABLE: 2,
    Status.SKIPPED: 1,
}
# The run's exit status when nothing failed but some scenario was INCONCLUSIVE: the host, not the
# implementation (pytest's own codes are 0-5).
EXIT_INCONCLUSIVE = 6
# User properties on a report (they cross pytest-xdist's wire as strings).
NOT_APPLICABLE_KEY = "not-applicable"
INCONCLUSIVE_KEY = "inconclusive"
HUNG_KEY = "hung"
HOST_KEY = "host"  # the host's figures during a timing-bounded test, per attempt (harness.timing)
TIMING_MISS_KEY = "timing-miss"  # the test failed on a time bound a starved host can break
MESSAGE_LIMIT = 4000  # characters of a failure message kept in the reports


@dataclass(frozen=True)
class NotApplicable:
    """Why a scenario does not apply: capabilities the SUT does not claim, or a mode of the run."""

    sut: str
    capabilities: tuple[str, ...] = ()
    mode: str = ""
    why: str = ""

    def __str__(self) -> str:
        if self.capabilities:
            return f"SUT {self.sut!r} does not claim {', '.join(self.capabilities)}"
        return f"not run in {self.mode} mode: {self.why}"

    def to_json(self) -> str:
        return json.dumps(
            {"sut": self.sut, "capabilities": self.capabilities, "mode": self.mode, "why": self.why}
        )

    @classmethod
    def from_json(cls, text: str) -> NotApplicable:
        data = json.loads(text)
        return cls(str(data["sut"]), tuple(data["capabilities"]), str(data["mode"]), str(data["why"]))


def not_applicable(item: pytest.Item, reason: NotApplicable) -> None:
    """Ends the test as NOT_APPLICABLE, with its typed reason on the report."""
    item.user_properties.append((NOT_APPLICABLE_KEY, reason.to_json()))
    pytest.skip(f"not applicable: {reason}")


class TimingMiss(AssertionError):
    """A time bound missed: what a host starved of CPU can cause as well as the implementation.
    Only these failures are retried on an unsteady host and can end INCONCLUSIVE (harness.timing);
    every other assertion is plainly the implementation's."""


def within(measured: float, bound: float, message: str, *, plainly_past: float | None = None) -> None:
    """Fails unless `measured` <= `bound`: with a TimingMiss, or, past `plainly_past` (a figure no
    busy host explains, e.g. several times the bound), with a plain failure that stands on any host."""
    if measured <= bound:
        return
    if plainly_past is not None and measured > plainly_past:
        raise AssertionError(f"{message} (past {plainly_past:g}: no busy host explains that)")
    raise TimingMiss(message)


class Inconclusive(Exception):
    """The harness or the host could not measure what the scenario judges. Raised by a test (or a
    check) instead of failing; `figures` say what was measured (the host's steadiness, the
    harness's own capacity), so a reader can tell how far off the measurement was."""

    def __init__(self, message: str, figures: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.figures = dict(figures or {})

    def to_json(self) -> str:
        return json.dumps({"reason": self.message, "figures": self.figures}, default=str)


@dataclass
class Outcome:
    """One scenario ID's outcome from one test."""

    status: Status
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- deciding


def decide(report: pytest.TestReport, ids: Sequence[str]) -> dict[str, Outcome] | None:
    """Each of the test's scenario IDs and its outcome from this report phase; None for a phase
    that says nothing (a passing set-up or tear-down)."""
    whole = _whole_test(report)
    if whole is None:
        return None
    host = [json.loads(str(v)) for k, v in report.user_properties if k == HOST_KEY]
    checked = checks_recorded(report.user_properties)
    # one verdict per ID: each check's own; an ID with no check takes what the rest of the test did
    rest = Outcome(Status.PASSED) if checked and _only_checks_failed(report) else whole
    decided = {sid: checked.get(sid, rest) for sid in ids}
    if host:  # the host's figures of a timing-bounded test go with each of its IDs
        decided = {
            sid: Outcome(o.status, o.reason, {**o.figures, "host": host[-1]}) for sid, o in decided.items()
        }
    return decided


def _whole_test(report: pytest.TestReport) -> Outcome | None:
    props = dict((str(k), v) for k, v in report.user_properties)
    if HUNG_KEY in props and (report.when == "call" or report.failed):
        data = json.loads(str(props[HUNG_KEY]))
        return Outcome(Status.HUNG, str(data["reason"]), dict(data.get("figures", {})))
    if INCONCLUSIVE_KEY in props and report.when == "call":
        data = json.loads(str(props[INCONCLUSIVE_KEY]))
        return Outcome(Status.INCONCLUSIVE, str(data["reason"]), dict(data.get("figures", {})))
    if report.skipped and NOT_APPLICABLE_KEY in props:
        return Outcome(Status.NOT_APPLICABLE, str(NotApplicable.from_json(str(props[NOT_APPLICABLE_KEY]))))
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            if report.passed:  # a strict xfail that passed: the known-failures list is stale
                return Outcome(Status.STALE, f"listed as a known failure but passed: {report.wasxfail}")
            return Outcome(Status.KNOWN_FAILURE, str(report.wasxfail))
        if report.failed:
            return Outcome(Status.FAILED, failure_message(report))
        if report.skipped:
            return Outcome(Status.SKIPPED, _skip_reason(report))
        return Outcome(Status.PASSED)
    if report.when == "setup" and report.failed:
        return Outcome(Status.ERROR, failure_message(report))
    if report.when == "setup" and report.skipped:
        return Outcome(Status.SKIPPED, _skip_reason(report))
    if report.when == "teardown" and report.failed:
        return Outcome(Status.ERROR, "teardown: " + failure_message(report))
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def failure_message(report: pytest.TestReport) -> str:
    """The failure's own message, whole (not an exception it was raised from, nor the rewritten
    `assert ...` explanation pytest adds under it)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if not message:
        text = report.longreprtext.strip()
        return text.splitlines()[-1][:MESSAGE_LIMIT] if text else ""
    return message_of(str(message))


def message_of(text: str) -> str:
    """A failure's message as the reports keep it: every line of it, without pytest's rewritten
    `assert ...` explanation and without the `AssertionError: ` or `Failed: ` type prefix."""
    lines = text.strip().splitlines()
    kept: list[str] = []
    for line in lines:
        if line.startswith("assert ") and kept:
            break
        kept.append(line)
    message = re.sub(r"^(?:\w+\.)*(?:AssertionError|TimingMiss|Failed): ", "", "\n".join(kept))
    return message[:MESSAGE_LIMIT]


# ------------------------------------------------------------------------- per-ID checks

CHECK_KEY = "verdict"  # user property: one check's outcome (harness.verdicts)
ONLY_CHECKS_FAILED = "only-checks-failed"  # user property: the test failed through its checks alone


def record_check(item: pytest.Item, scenario_id: str, outcome: Outcome, timing_miss: bool = False) -> None:
    record = {
        "id": scenario_id,
        "status": outcome.status.value,
        "reason": outcome.reason,
        "figures": outcome.figures,
        "timing_miss": timing_miss,  # a FAILED check on a time bound: harness.timing may retry it
    }
    item.user_properties.append((CHECK_KEY, json.dumps(record, default=str)))


def checks_recorded(user_properties: Sequence[tuple[str, object]]) -> dict[str, Outcome]:
    """The checks' outcomes in a report's user properties: ID -> Outcome; the most severe wins."""
    found: dict[str, Outcome] = {}
    for key, value in user_properties:
        if key != CHECK_KEY:
            continue
        record = json.loads(str(value))
        outcome = Outcome(Status(record["status"]), str(record["reason"]), dict(record.get("figures") or {}))
        sid = str(record["id"])
        if sid not in found or SEVERITY[outcome.status] > SEVERITY[found[sid].status]:
            found[sid] = outcome
    return found


def _only_checks_failed(report: pytest.TestReport) -> bool:
    return any(key == ONLY_CHECKS_FAILED for key, _ in report.user_properties)


def run_exit_status(statuses: Sequence[Status], pytest_status: int) -> int:
    """The run's exit status: pytest's own unless it says all passed; then EXIT_INCONCLUSIVE when
    some scenario was inconclusive (the host, not the implementation), 0 else."""
    if pytest_status == 0 and Status.INCONCLUSIVE in statuses:
        return EXIT_INCONCLUSIVE
    return pytest_status
