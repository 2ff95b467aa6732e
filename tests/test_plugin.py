"""The harness plugin, tested the pytest way (pytester): selection, manifests, known failures,
capabilities, the report and JUnit properties."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness import catalogue
from harness.sut.manifest import DEFAULT_MANIFEST

SPEC_TESTS = """
import pytest

pytestmark = pytest.mark.unit

@pytest.mark.scenario("3.2.1.a")
def test_start():
    assert True

@pytest.mark.scenario("3.2.1.b")
def test_stop():
    assert True

@pytest.mark.scenario("4.3.1.a")
def test_mock():
    assert True

@pytest.mark.requires("tls")
@pytest.mark.scenario("3.2.1.c")
def test_needs_tls():
    assert True
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:asyncio -p no:cacheprovider\n")
    pytester.makepyfile(test_spec=SPEC_TESTS)
    return pytester


def manifest(tmp: Path, extra: str = "", capabilities: str = '["tls"]') -> Path:
    text = DEFAULT_MANIFEST.read_text().split("[programs.exchange_connector]", 1)[1]
    body = f'name = "other"\ncapabilities = {capabilities}\n[programs.exchange_connector]' + text + extra
    path = tmp / "sut.toml"
    path.write_text(body)
    return path


def test_scenario_option_selects_a_section_or_an_id(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--scenario", "3.2")
    result.assert_outcomes(passed=3)
    result = suite.runpytest("--scenario", "4.3.1.a")
    result.assert_outcomes(passed=1)
    result = suite.runpytest("--scenario", "3.2.1", "--scenario", "4.3")
    result.assert_outcomes(passed=4)


def test_unclaimed_capability_is_not_applicable(suite: pytest.Pytester) -> None:
    path = manifest(suite.path, capabilities="[]")
    result = suite.runpytest("--sut", str(path), "--report-dir", "out")
    result.assert_outcomes(passed=3, skipped=1)
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    status = {row["id"]: row for row in report["scenarios"]}
    assert status["3.2.1.c"]["status"] == "not-applicable"
    assert "does not claim tls" in status["3.2.1.c"]["reason"]
    assert status["3.2.1.a"]["status"] == "passed"
    assert report["sut"]["name"] == "other"
    markdown = (suite.path / "out" / "conformance-report.md").read_text()
    # the suite's own self-check (4.3.1.a) is not counted for the SUT; the row says what did not run
    unit = [s for s in catalogue.load().testable() if s.level == "unit" and s.subject == "sut"]
    row = f"2/2 applicable scenarios passed (1 not applicable, {len(unit) - 3} not run)"
    assert f"| unit tests pass | 100 % | {row} | PASS |" in markdown
    criteria = {c["id"]: c for c in report["criteria"]}
    assert criteria["10.1"]["measured"] == row and criteria["10.1"]["status"] == "PASS"
    html = (suite.path / "out" / "conformance-report.html").read_text()
    assert f"<td>{row}</td>" in html
    assert "The suite's own checks" in markdown and "4.3.1.a" in markdown.split("The suite's own checks")[1]


def test_known_failure_that_fails_is_reported_and_one_that_passes_fails_the_run(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_broken="""
        import pytest
        @pytest.mark.unit
        @pytest.mark.scenario("3.2.1.d")
        def test_double_stop():
            assert False, "expected no error, got one"
        """
    )
    listed = manifest(suite.path, '\n[known_failures]\n"3.2.1.d" = "double stop raises"\n')
    result = suite.runpytest("--sut", str(listed), "--report-dir", "out")
    result.assert_outcomes(passed=4, xfailed=1)
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    assert {r["id"]: r["status"] for r in report["scenarios"]}["3.2.1.d"] == "known-failure"

    stale = manifest(suite.path, '\n[known_failures]\n"3.2.1.a" = "was broken once"\n')
    result = suite.runpytest("--sut", str(stale), "--report-dir", "out2")
    assert result.ret != 0, "a known failure that passes must fail the run"
    result.stdout.fnmatch_lines(["*XPASS(strict)*3.2.1.a*"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('name = "x"\n', "missing table [programs]"),
        (
            'name = "x"\n[programs.exchange_connector]\nready = "grpc-health"\n',
            "programs.exchange_connector: missing key 'command'",
        ),
        ("[programs]\n", "missing key 'name'"),
        (
            'name = "x"\n[programs.exchange_connector]\ncommand = ["{python}", "--port", "{grpc_prot}"]\n',
            "unknown placeholder {grpc_prot}",
        ),
        (
            'name = "x"\n[programs.exchange_connector]\ncommand = ["no-such-binary-here"]\n',
            "command not found: no-such-binary-here",
        ),
        ('name = "x"\ncapabilities = ["telepathy"]\n[programs]\n', "unknown capability 'telepathy'"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_manifest_is_one_clear_line(suite: pytest.Pytester, content: str, message: str) -> None:
    path = suite.path / "bad.toml"
    path.write_text(content)
    result = suite.runpytest("--sut", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "--sut" in line]
    assert errors and message in errors[0], f"expected one line naming {message!r}, got {result.stderr.lines}"


def test_missing_manifest_file_is_a_usage_error(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--sut", "nope.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sut: no such file: nope.toml*"])


def test_report_and_junit_carry_scenario_ids(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--report-dir", "out", "--junitxml", "out/junit.xml")
    result.assert_outcomes(passed=4)
    junit = (suite.path / "out" / "junit.xml").read_text()
    assert '<property name="scenario" value="3.2.1.a"' in junit
    markdown = (suite.path / "out" / "conformance-report.md").read_text()
    assert "## Success criteria (spec §10)" in markdown
    assert "| 3.2.1.a | unit |" in markdown
    assert (suite.path / "out" / "conformance-report.html").read_text().startswith("<!doctype html>")
    result.stdout.fnmatch_lines(["*conformance: per-scenario summary*", "PASS*3.2.1.a*"])


def test_metrics_reach_the_report_and_the_criteria_table(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_perf="""
        import pytest
        @pytest.mark.perf
        @pytest.mark.scenario("6.1.1.a")
        def test_latency(metrics):
            metrics.record("get_account_p50_ms", 0.5, "ms")
        """
    )
    result = suite.runpytest("--report-dir", "out", "test_perf.py")
    result.assert_outcomes(passed=1)
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    assert report["metrics"][0]["name"] == "get_account_p50_ms"
    assert report["metrics"][0]["scenario_ids"] == ["6.1.1.a"]
    markdown = (suite.path / "out" / "conformance-report.md").read_text()
    assert "| GetAccount latency p50 | < 2 ms | 0.5 ms | PASS |" in markdown


def test_soak_runs_only_when_asked(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_soak=textwrap.dedent(
            """
            import pytest
            @pytest.mark.soak
            @pytest.mark.scenario("7.1.1.a")
            def test_soak():
                assert True
            """
        )
    )
    suite.runpytest("test_soak.py").assert_outcomes(deselected=1)
    suite.runpytest("test_soak.py", "-m", "soak").assert_outcomes(passed=1)


def test_trace_records_the_grpc_exchange_of_a_failing_test(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\nasyncio_mode = strict\n")
    pytester.makepyfile(
        test_traced="""
        import grpc, pytest
        from opensqt.exchange.v1 import exchange_pb2 as pb, exchange_pb2_grpc as pb_grpc

        @pytest.mark.integration
        @pytest.mark.scenario("4.2.1.a")
        @pytest.mark.asyncio
        async def test_fails_after_calls(mock_exchange):
            async with grpc.aio.insecure_channel(mock_exchange.address) as channel:
                stub = pb_grpc.ExchangeServiceStub(channel)
                await stub.GetAccount(pb.GetAccountRequest(), metadata=[("x-test", "1")])
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetPositions(pb.GetPositionsRequest(symbol="bad symbol"))
            assert False, "expected to fail"
        """
    )
    result = pytester.runpytest_subprocess("--grpc-trace", "--report-dir", "out")
    result.assert_outcomes(failed=1)
    traces = list((pytester.path / "out" / "traces").glob("*.json"))
    assert len(traces) == 1, f"expected one trace file, got {traces}"
    trace = json.loads(traces[0].read_text())
    assert trace["scenarios"] == ["4.2.1.a"]
    methods = [(c["method"], c["code"]) for c in trace["calls_to_sut"]]
    assert methods == [
        ("/opensqt.exchange.v1.ExchangeService/GetAccount", "OK"),
        ("/opensqt.exchange.v1.ExchangeService/GetPositions", "INVALID_ARGUMENT"),
    ], methods
    assert ["x-test", "1"] in trace["calls_to_sut"][0]["metadata"]
    upstream = [(c["method"], c["code"]) for c in trace["calls_to_mock_exchange"]]
    assert ("GetAccount", "OK") in upstream and ("GetPositions", "INVALID_ARGUMENT") in upstream, upstream


def test_failure_reason_is_the_tests_own_message(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_reason="""
        import pytest
        @pytest.mark.unit
        @pytest.mark.scenario("3.2.1.d")
        def test_fails_inside_except():
            try:
                raise KeyError("inner")
            except KeyError:
                pytest.fail("expected no error on a second stop,\\ngot KeyError")
        """
    )
    result = suite.runpytest("--report-dir", "out", "test_reason.py")
    result.assert_outcomes(failed=1)
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    reason = {r["id"]: r["reason"] for r in report["scenarios"]}["3.2.1.d"]
    # the harness writes the scenario and its rules from the catalogue; the whole message is kept
    rules = catalogue.load().get("3.2.1.d").rules  # type: ignore[union-attr]
    head = "[3.2.1.d]" + (f" (rule{'s' if len(rules) > 1 else ''} {', '.join(rules)})" if rules else "")
    assert reason == f"{head}: expected no error on a second stop,\ngot KeyError", reason
    assert f"Failed: {head}: expected no error on a second stop," in result.stdout.str()


def test_long_benchmarks_run_only_under_m_perf(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_long="""
        import pytest
        @pytest.mark.perf
        @pytest.mark.perf_long
        @pytest.mark.scenario("6.3.1.a")
        def test_load(load_duration):
            assert load_duration == 300.0
        """
    )
    suite.runpytest("test_long.py").assert_outcomes(deselected=1)
    suite.runpytest("test_long.py", "-m", "perf").assert_outcomes(passed=1)


VERDICT_TESTS = """
import pytest

pytestmark = pytest.mark.perf

@pytest.mark.scenario("6.1.1.a", "6.1.1.b")
def test_latency(verdicts, metrics):
    p50, p99 = 0.8, 7.5
    metrics.record("get_account_p50_ms", p50, "ms")
    metrics.record("get_account_p99_ms", p99, "ms")
    with verdicts.check("6.1.1.a"):
        assert p50 < 2.0, f"[6.1.1.a] expected p50 < 2 ms, got {p50} ms"
    with verdicts.check("6.1.1.b"):
        assert p99 < 5.0, f"[6.1.1.b] expected p99 < 5 ms, got {p99} ms"
"""


def test_a_p99_miss_fails_only_the_p99_scenario(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_verdicts=VERDICT_TESTS)
    result = suite.runpytest("--report-dir", "out", "test_verdicts.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*1 scenario check(s) failed*", "*6.1.1.b: *expected p99 < 5 ms, got 7.5 ms*"]
    )
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    status = {row["id"]: row for row in report["scenarios"]}
    assert status["6.1.1.a"]["status"] == "passed"
    assert status["6.1.1.b"]["status"] == "failed"
    assert "got 7.5 ms" in status["6.1.1.b"]["reason"]
    criteria = {row["id"]: row for row in report["criteria"]}
    assert criteria["10.5"]["status"] == "PASS" and criteria["10.6"]["status"] == "FAIL"


def test_a_known_failure_judged_in_its_own_check(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_verdicts=VERDICT_TESTS)
    listed = manifest(suite.path, '\n[known_failures]\n"6.1.1.b" = "p99 above target on this host"\n')
    result = suite.runpytest("--sut", str(listed), "--report-dir", "out", "test_verdicts.py")
    result.assert_outcomes(passed=1)
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    status = {row["id"]: row["status"] for row in report["scenarios"]}
    assert (status["6.1.1.a"], status["6.1.1.b"]) == ("passed", "known-failure")

    stale = manifest(suite.path, '\n[known_failures]\n"6.1.1.a" = "was slow once"\n')
    result = suite.runpytest("--sut", str(stale), "--report-dir", "out2", "test_verdicts.py")
    assert result.ret != 0, "a known failure that passes must fail the run"
    report = json.loads((suite.path / "out2" / "conformance-report.json").read_text())
    status = {row["id"]: row for row in report["scenarios"]}
    assert (
        status["6.1.1.a"]["status"] == "stale-known-failure"
        and "listed as a known failure" in status["6.1.1.a"]["reason"]
    )
