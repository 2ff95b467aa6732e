"""One verdict per scenario ID: a test that verifies several IDs judges each in its own check, so a
failing assertion fails only its own ID (a p99 miss never fails the p50 scenario).

    def test_latency(verdicts):
        ...
        with verdicts.check("6.1.1.a"):
            assert p50 < 2.0, f"[6.1.1.a] expected p50 < 2 ms, got {p50:.2f} ms"
        with verdicts.check("6.1.1.b"):
            assert p99 < 5.0, ...

Each check records ("verdict", {"id", "status", "reason"}) on the test; the test as a whole fails
when any check failed, and the report gives every ID its own status. An ID of the test with no check
takes the test's outcome. A check of a listed known failure that fails is a known failure (the test
goes on); one that passes fails the run, as the list is stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

VERDICT = "verdict"  # user property: one check's result
ONLY_CHECKS_FAILED = "only-checks-failed"  # user property: the test failed through its checks alone
Failure = (Exception, pytest.fail.Exception)  # pytest.fail() raises an exception outside Exception


class Verdicts:
    def __init__(self, item: pytest.Item, scenario_ids: list[str], known_failures: Mapping[str, str]) -> None:
        self._item = item
        self._ids = scenario_ids
        self._known = known_failures
        self.failures: dict[str, str] = {}

    @contextmanager
    def check(self, scenario_id: str) -> Iterator[None]:
        if scenario_id not in self._ids:
            raise ValueError(f"{scenario_id!r} is not one of this test's scenario IDs {self._ids}")
        try:
            yield
        except Failure as error:
            reason = _first_line(error)
            if scenario_id in self._known:
                self._record(
                    scenario_id, "known-failure", f"known failure {scenario_id}: {self._known[scenario_id]}"
                )
            else:
                self._record(scenario_id, "failed", reason)
                self.failures[scenario_id] = reason
        else:
            if scenario_id in self._known:
                reason = f"listed as a known failure but passed: {self._known[scenario_id]}"
                self._record(scenario_id, "failed", reason)
                self.failures[scenario_id] = reason
            else:
                self._record(scenario_id, "passed", "")

    def _record(self, scenario_id: str, status: str, reason: str) -> None:
        record = {"id": scenario_id, "status": status, "reason": reason}
        self._item.user_properties.append((VERDICT, json.dumps(record)))

    def summary(self) -> str:
        lines = [f"{len(self.failures)} scenario check(s) failed:"]
        lines += [f"  {sid}: {reason}" for sid, reason in self.failures.items()]
        return "\n".join(lines)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    first = text.splitlines()[0]
    return first if isinstance(error, AssertionError) else f"{type(error).__name__}: {first}"[:300]


def recorded(user_properties: list[tuple[str, object]]) -> dict[str, tuple[str, str]]:
    """The checks' verdicts in a report's user properties: ID -> (status, reason); a failure wins."""
    verdicts: dict[str, tuple[str, str]] = {}
    for key, value in user_properties:
        if key != VERDICT:
            continue
        record = json.loads(str(value))
        sid, status, reason = str(record["id"]), str(record["status"]), str(record["reason"])
        if sid not in verdicts or status != "passed":
            verdicts[sid] = (status, reason)
    return verdicts
