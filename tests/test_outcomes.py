"""The outcome model (harness.outcomes): one place decides how a scenario ended, and every report
and the run's exit status read it."""

from __future__ import annotations

import json

import pytest

from harness.outcomes import (
    EXIT_INCONCLUSIVE,
    FAILING,
    NotApplicable,
    Status,
    message_of,
    run_exit_status,
)

pytest_plugins = ["pytester"]

INCONCLUSIVE_TEST = """
import pytest
from harness.outcomes import Inconclusive

@pytest.mark.unit
@pytest.mark.scenario("3.2.1.a")
def test_host_stalled():
    raise Inconclusive(
        "the host could not measure this; rerun on a quieter machine",
        {"host_stall_max_ms": 812.0, "attempts": 3},
    )

@pytest.mark.unit
@pytest.mark.scenario("3.2.1.b")
def test_fine():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:asyncio -p no:cacheprovider\n")
    return pytester


def _statuses(suite: pytest.Pytester, folder: str = "out") -> dict[str, dict[str, object]]:
    report = json.loads((suite.path / folder / "conformance-report.json").read_text())
    return {row["id"]: row for row in report["scenarios"] if row["status"] != "not-run"}


def test_an_inconclusive_scenario_is_neither_a_pass_nor_a_failure(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_host=INCONCLUSIVE_TEST)
    result = suite.runpytest("--report-dir", "out", "test_host.py")
    assert result.ret == EXIT_INCONCLUSIVE, "a run with an INCONCLUSIVE scenario has its own exit status"
    rows = _statuses(suite)
    assert rows["3.2.1.a"]["status"] == "inconclusive" and rows["3.2.1.b"]["status"] == "passed"
    assert "rerun on a quieter machine" in str(rows["3.2.1.a"]["reason"])
    tests = json.loads((suite.path / "out" / "conformance-report.json").read_text())["tests"]
    figures = next(t["figures"] for t in tests if t["scenario_ids"] == ["3.2.1.a"])
    assert figures == {"host_stall_max_ms": 812.0, "attempts": 3}
    # the last line says so, and the summary names the figures
    last = result.stdout.lines[-1]
    assert "1 inconclusive" in last and "1 passed" in last, last
    assert any("INCONCLUSIVE" in line and "host_stall_max_ms 812" in line for line in result.stdout.lines)
    markdown = (suite.path / "out" / "conformance-report.md").read_text()
    assert "INCONCLUSIVE" in markdown


def test_a_failure_outranks_an_inconclusive_one_in_the_exit_status(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_host=INCONCLUSIVE_TEST + '\n@pytest.mark.unit\n@pytest.mark.scenario("3.2.1.c")\n'
        "def test_broken():\n    assert False, 'expected a clean exit, got -9'\n"
    )
    assert suite.runpytest("--report-dir", "out", "test_host.py").ret == 1


def test_an_inconclusive_check_judges_only_its_own_id(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_checks="""
        import pytest
        from harness.outcomes import Inconclusive

        @pytest.mark.perf
        @pytest.mark.scenario("6.1.1.a", "6.1.1.b")
        def test_latency(verdicts):
            with verdicts.check("6.1.1.a"):
                assert True
            with verdicts.check("6.1.1.b"):
                raise Inconclusive("the host stalled", {"stall_ms": 300})
        """
    )
    result = suite.runpytest("--report-dir", "out", "test_checks.py")
    rows = _statuses(suite)
    assert (rows["6.1.1.a"]["status"], rows["6.1.1.b"]["status"]) == ("passed", "inconclusive")
    assert result.ret == EXIT_INCONCLUSIVE


def test_not_applicable_carries_its_typed_reason(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_gate="""
        import pytest

        @pytest.mark.integration
        @pytest.mark.scenario("4.2.1.x5")
        @pytest.mark.requires("tls")
        def test_tls():
            pass
        """
    )
    manifest = suite.path / "sut.toml"
    from harness.sut.manifest import DEFAULT_MANIFEST

    body = DEFAULT_MANIFEST.read_text().split("[programs.exchange_connector]", 1)[1]
    manifest.write_text('name = "plain"\ncapabilities = []\n[programs.exchange_connector]' + body)
    suite.runpytest("--sut", str(manifest), "--report-dir", "out", "test_gate.py").assert_outcomes(skipped=1)
    row = _statuses(suite)["4.2.1.x5"]
    assert (row["status"], row["reason"]) == ("not-applicable", "SUT 'plain' does not claim tls")


def test_the_model_in_small() -> None:
    assert {s for s in Status if s.is_failure} == FAILING
    assert Status.INCONCLUSIVE not in FAILING and not Status.INCONCLUSIVE.passed_or_excused
    assert f"{Status.HUNG}" == "hung" and Status.HUNG.label == "HUNG"
    assert run_exit_status([Status.PASSED, Status.INCONCLUSIVE], 0) == EXIT_INCONCLUSIVE
    assert run_exit_status([Status.FAILED, Status.INCONCLUSIVE], 1) == 1
    assert run_exit_status([Status.PASSED], 0) == 0
    assert run_exit_status([Status.INCONCLUSIVE], 2) == 2  # interrupted says more
    reason = NotApplicable("x", mode="attach", why="the scenario restarts the connector")
    assert NotApplicable.from_json(reason.to_json()) == reason
    assert str(reason) == "not run in attach mode: the scenario restarts the connector"


def test_a_message_is_kept_whole_without_the_rewritten_assert() -> None:
    text = "AssertionError: update 3 was lost\nexpected 1..20, got 1, 2, 4..20\nassert 19 == 20\n +  where 19 = len(got)"
    assert message_of(text) == "update 3 was lost\nexpected 1..20, got 1, 2, 4..20"


def test_a_bound_missed_by_far_is_plainly_the_implementations() -> None:
    from harness.outcomes import TimingMiss, within

    within(1.9, 2.0, "fine")
    with pytest.raises(TimingMiss):
        within(2.3, 2.0, "a little late", plainly_past=4.0)
    with pytest.raises(AssertionError) as plain:
        within(7.5, 2.0, "far too late", plainly_past=4.0)
    assert not isinstance(plain.value, TimingMiss)
    assert "no busy host explains that" in str(plain.value)
