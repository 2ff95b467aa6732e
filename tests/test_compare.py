"""--compare PREVIOUS.json: a run lists the scenarios whose status changed and the figures that moved
beyond their tolerance since an earlier report, writes them to comparison.{json,md}, and exits 1
on a scenario regression."""

from __future__ import annotations

import json

import pytest

from harness.report import compare

SPEC_TESTS = """
import os
import pytest

pytestmark = pytest.mark.unit

@pytest.mark.scenario("3.2.1.a")
def test_start(metrics):
    metrics.record("stream_msgs_per_s", float(os.environ.get("RATE", "1000")), "msg/s")
    metrics.record("get_account_p50_ms", float(os.environ.get("P50", "0.6")), "ms")

@pytest.mark.scenario("3.2.1.b")
def test_stop():
    assert os.environ.get("BREAK") != "1", "injected regression"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:asyncio -p no:cacheprovider\n")
    pytester.makepyfile(test_spec=SPEC_TESTS)
    return pytester


@pytest.mark.timeout(120)
def test_compare_lists_an_injected_regression_and_a_moved_figure(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = suite.runpytest_subprocess("--report-dir", "before")
    first.assert_outcomes(passed=2)
    previous = suite.path / "before" / "conformance-report.json"

    monkeypatch.setenv("BREAK", "1")  # 3.2.1.b now fails
    monkeypatch.setenv("RATE", "400")  # -60 %: beyond the +-30 % of a throughput
    monkeypatch.setenv("P50", "0.65")  # +8 %: inside the band of a latency
    second = suite.runpytest_subprocess("--report-dir", "after", "--compare", str(previous))
    second.assert_outcomes(passed=1, failed=1)
    assert second.ret == 1
    second.stdout.fnmatch_lines(
        [
            "*changes since the compared report*",
            "REGRESSION*3.2.1.b*passed -> failed*",
            "moved*stream_msgs_per_s: 1000 -> 400 msg/s (-60 %)*",
        ]
    )
    assert "get_account_p50_ms" not in second.stdout.str().split("changes since the compared report")[1]
    written = json.loads((suite.path / "after" / "comparison.json").read_text())
    assert written["regressions"] == 1
    assert [(s["id"], s["before"], s["after"]) for s in written["statuses"]] == [
        ("3.2.1.b", "passed", "failed")
    ]
    assert [f["name"] for f in written["figures"]] == ["stream_msgs_per_s"]
    markdown = (suite.path / "after" / "comparison.md").read_text()
    assert "| 3.2.1.b |" in markdown and "| `stream_msgs_per_s` |" in markdown


@pytest.mark.timeout(120)
def test_compare_with_no_change_passes_and_says_so(suite: pytest.Pytester) -> None:
    suite.runpytest_subprocess("--report-dir", "before").assert_outcomes(passed=2)
    previous = suite.path / "before" / "conformance-report.json"
    again = suite.runpytest_subprocess("--report-dir", "before", "--compare", str(previous))
    again.assert_outcomes(passed=2)
    assert again.ret == 0
    again.stdout.fnmatch_lines(["*no scenario changed status; no figure moved beyond its tolerance*"])


@pytest.mark.timeout(60)
def test_compare_refuses_a_file_that_is_not_a_report(suite: pytest.Pytester) -> None:
    bogus = suite.path / "bogus.json"
    bogus.write_text('{"not": "a report"}')
    result = suite.runpytest_subprocess("--report-dir", "out", "--compare", str(bogus))
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--compare*not a conformance report*"])


def test_a_known_failure_that_passed_before_is_a_regression() -> None:
    before = {"scenarios": [{"id": "4.2.1.b", "status": "passed"}, {"id": "4.2.1.c", "status": "failed"}]}
    after = {
        "scenarios": [{"id": "4.2.1.b", "status": "known-failure"}, {"id": "4.2.1.c", "status": "passed"}]
    }
    result = compare.compare(before, after)
    assert [(c.id, c.regression) for c in result.statuses] == [("4.2.1.b", True), ("4.2.1.c", False)]


def test_every_figure_has_a_stated_tolerance() -> None:
    assert compare.tolerance("fanout_100_lost")[:2] == (0.0, 0.0)
    assert compare.tolerance("stream_throughput_relay_ratio")[0] == 0.25
    assert compare.tolerance("some_new_figure")[2].startswith("any other figure")
    assert not compare.moved("get_account_p99_ms", 1.0, 1.4) and compare.moved("get_account_p99_ms", 1.0, 1.6)
