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

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

from harness.failure_prefix import prefixed
from harness.outcomes import Inconclusive, Outcome, Status, TimingMiss, message_of, record_check

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
        except Inconclusive as unmeasured:
            record_check(
                self._item, scenario_id, Outcome(Status.INCONCLUSIVE, unmeasured.message, unmeasured.figures)
            )
        except Failure as error:
            reason = prefixed([scenario_id], _message(error))
            if scenario_id in self._known:
                known = f"known failure {scenario_id}: {self._known[scenario_id]}"
                record_check(self._item, scenario_id, Outcome(Status.KNOWN_FAILURE, known))
            else:
                timing = isinstance(error, TimingMiss)
                record_check(self._item, scenario_id, Outcome(Status.FAILED, reason), timing_miss=timing)
                self.failures[scenario_id] = reason
        else:
            if scenario_id in self._known:
                reason = f"listed as a known failure but passed: {self._known[scenario_id]}"
                record_check(self._item, scenario_id, Outcome(Status.STALE, reason))
                self.failures[scenario_id] = reason
            else:
                record_check(self._item, scenario_id, Outcome(Status.PASSED))

    def summary(self) -> str:
        lines = [f"{len(self.failures)} scenario check(s) failed:"]
        lines += [f"  {sid}: {reason}" for sid, reason in self.failures.items()]
        return "\n".join(lines)


def _message(error: BaseException) -> str:
    text = message_of(str(error)) or type(error).__name__
    return (
        text
        if isinstance(error, (AssertionError, pytest.fail.Exception))
        else f"{type(error).__name__}: {text}"
    )
