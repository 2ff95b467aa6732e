"""The conformance harness as a pytest plugin (entry point `pytest11`): its hooks only.

Options live in harness.options, selection and capability gating in harness.selection, the
report's bookkeeping in harness.recorder; the fixtures are the plugin modules named below.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from harness import budget, explain, markers, options, rerun, selection
from harness import catalogue as catalogue_module
from harness.failure_prefix import prefix_exception
from harness.outcomes import (
    HUNG_KEY,
    INCONCLUSIVE_KEY,
    ONLY_CHECKS_FAILED,
    TIMING_MISS_KEY,
    Inconclusive,
    Status,
    TimingMiss,
    run_exit_status,
)
from harness.recorder import Recorder
from harness.report import coverage
from harness.report.results import RunResults
from harness.stash import LAUNCHER_KEY, MANIFEST_KEY, RESULTS_KEY, VERDICTS_KEY
from harness.sut.manifest import DEFAULT_MANIFEST, ManifestError, load_manifest
from harness.timing import is_timing_bounded, run_with_host_watch

pytest_plugins = [
    "harness.fixtures",
    "harness.perf.fixtures",
    "harness.sut.driver_fixtures",
    "harness.sut.connector_fixtures",
]
LOG_TAIL_LINES = 30


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(tryfirst=True)  # before junitxml reads its path
def pytest_configure(config: pytest.Config) -> None:
    markers.register_markers(config)
    if getattr(config.option, "xmlpath", None) is None:
        # JUnit XML always goes with the other reports, into --report-dir
        config.option.xmlpath = str(Path(config.getoption("report_dir")) / "junit.xml")
    path = config.getoption("sut") or DEFAULT_MANIFEST
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        raise pytest.UsageError(f"--sut: {exc}") from None
    unknown = sorted(sid for sid in manifest.known_failures if sid not in catalogue_module.load())
    if unknown:
        raise pytest.UsageError(f"--sut: [known_failures] names {unknown[0]!r}, which is not a scenario ID")
    config.stash[MANIFEST_KEY] = manifest
    results = RunResults(sut_name=manifest.name, sut_digest=manifest.digest)
    config.stash[RESULTS_KEY] = results
    config.pluginmanager.register(Recorder(config, results), "conformance-recorder")
    config.pluginmanager.register(TimingBounded(), "conformance-timing")
    rerun.configure(config)
    if config.getoption("attach") and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--attach runs against one program you started: in one process (-n 0)")
    if config.pluginmanager.hasplugin("xdist"):
        from harness.schedule import ExclusiveScheduling

        config.pluginmanager.register(ExclusiveScheduling(config), "conformance-exclusive")
    if config.getoption("grpc_trace"):
        from harness import trace

        trace.install()
        config.add_cleanup(trace.uninstall)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    selection.write_listing(items, config)
    dropped = selection.select(items, config, config.stash[MANIFEST_KEY])
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    if explain.wanted(config):
        explain.show(config, items)
        return
    budget.apply_budgets(items, config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    if item.config.getoption("grpc_trace"):
        from harness.trace import TRACER

        TRACER.clear()
    selection.skip_unless_claimed(item, item.config.stash[MANIFEST_KEY])
    return (yield from _with_prefix(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if not coverage.is_uninstrumented(item):
        return (yield)
    with coverage.uninstrumented():  # benchmarks measure the code, not a tracer
        return (yield)


def _with_prefix(item: pytest.Item) -> Generator[None, None, None]:
    # a failure's message starts with its scenario IDs and rules, written once, from the catalogue
    try:
        return (yield)
    except (AssertionError, pytest.fail.Exception) as error:
        prefix_exception(error, markers.scenario_ids(item))
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _with_prefix(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    return (yield from _with_prefix(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    budget.after_hang(item, report)
    if report.failed and budget.ran_past_budget(call):
        # a hang is a hang wherever it holds the test: in a fixture's set-up or tear-down as in the call
        _add_failure_context(item, report)
        budget.mark_hung(item, report)
        return report
    unmeasured = call.excinfo.value if call.excinfo is not None else None
    if report.when == "call" and isinstance(unmeasured, TimingMiss):
        report.user_properties.append((TIMING_MISS_KEY, str(unmeasured)))
    if report.when == "call" and isinstance(unmeasured, Inconclusive):
        # not a verdict on the implementation: neither a pass nor a failure (see harness.outcomes)
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"INCONCLUSIVE: {unmeasured.message}")
        report.user_properties.append((INCONCLUSIVE_KEY, unmeasured.to_json()))
        return report
    judged = item.stash.get(VERDICTS_KEY, None)
    if report.when == "call" and report.passed and judged is not None and judged.failures:
        # the checks caught their assertions so that every ID got its verdict: the test fails now
        report.outcome = "failed"
        report.longrepr = judged.summary()
        report.user_properties.append((ONLY_CHECKS_FAILED, "1"))
    if report.failed and report.when == "call":
        _add_failure_context(item, report)
    return report


def _add_failure_context(item: pytest.Item, report: pytest.TestReport) -> None:
    programs = item.stash.get(LAUNCHER_KEY, None)
    if programs is not None and programs.programs:
        # the programs are still running: their logs show what they saw up to the failure
        report.sections.append(("program logs", programs.log_tails(LOG_TAIL_LINES)))
    if item.config.getoption("grpc_trace"):
        from harness.trace import write_trace

        mock = getattr(item, "funcargs", {}).get("mock_exchange")
        upstream = mock.call_log() if mock is not None and hasattr(mock, "call_log") else None
        path = write_trace(
            item.config.getoption("report_dir") / "traces",
            item.nodeid,
            markers.scenario_ids(item),
            upstream,
        )
        report.sections.append(("gRPC trace", f"written to {path}"))


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    if report.when == "call" and any(key == INCONCLUSIVE_KEY for key, _ in report.user_properties):
        return "inconclusive", "I", "INCONCLUSIVE"
    if report.when == "call" and any(key == HUNG_KEY for key, _ in report.user_properties):
        return "hung", "H", "HUNG"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    from harness.sut import attach

    if attach.attach_mode(session.config) and session.items and not session.config.getoption("collectonly"):
        attach.begin(session.config, session.config.stash[MANIFEST_KEY])


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # a session a plugin test builds by hand (pytester.getitems) has no exitstatus of its own yet
    status = int(getattr(session, "exitstatus", exitstatus))
    if explain.wanted(session.config) and status == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # --list, --explain: nothing was to run
        return
    results = session.config.stash.get(RESULTS_KEY, None)
    if results is None or hasattr(session.config, "workerinput"):
        return
    statuses = [Status(outcome.outcome) for outcome in results.outcomes]
    session.exitstatus = run_exit_status(statuses, status)


class TimingBounded:
    """Runs each timing-bounded test under a host watch, with its retries (harness.timing)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if not is_timing_bounded(item):
            return None
        run_with_host_watch(item, nextitem)
        return True
