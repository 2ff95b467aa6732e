"""The conformance harness as a pytest plugin: options, markers, scenario selection, results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness import catalogue as catalogue_module
from harness.report import coverage
from harness.report.results import Metric, RunResults, TestOutcome
from harness.sut.manifest import DEFAULT_MANIFEST, Manifest, ManifestError, load_manifest

LEVEL_MARKERS = {
    "unit": "spec level 1: one component in isolation, no network I/O",
    "integration": "spec level 2: components over real loopback gRPC",
    "e2e": "spec level 3: the programs running as processes",
    "perf": "spec level 4: benchmarks and load (quick form by default, full with -m perf)",
    "soak": "spec §7: long stability run (needs SOAK_TEST=1)",
}
NOT_APPLICABLE = "not applicable:"
RESULTS_KEY = pytest.StashKey[RunResults]()
MANIFEST_KEY = pytest.StashKey[Manifest]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "exchange gRPC conformance suite")
    group.addoption(
        "--sut",
        metavar="PATH",
        type=_existing_file("--sut"),
        default=None,
        help="system-under-test manifest (TOML); default: the reference implementation's",
    )
    group.addoption(
        "--scenario",
        metavar="SELECTOR",
        action="append",
        default=[],
        help="run only the scenarios of a spec section (e.g. 4.2) or one scenario ID (e.g. 4.2.1.b); repeatable",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        type=Path,
        default=Path("reports"),
        help="where the conformance report and measured figures are written (default: reports/)",
    )
    group.addoption(
        "--list-scenarios",
        metavar="PATH",
        type=Path,
        default=None,
        help="write every collected test's scenario IDs and markers as JSON to PATH",
    )
    group.addoption(
        "--grpc-trace",
        action="store_true",
        default=False,
        help="record the gRPC calls of each test; for a failing test write them to <report-dir>/traces/",
    )
    group.addoption(
        "--load-duration",
        metavar="SECONDS",
        type=_positive_float("--load-duration"),
        default=None,
        help="duration of the §6.3 load test, which runs with -m perf (default: 300 s)",
    )
    group.addoption(
        "--soak-duration",
        metavar="DURATION",
        default=os.environ.get("SOAK_DURATION", "24h"),
        help="duration of the §7.1 soak test, e.g. 10m, 2h (default: $SOAK_DURATION or 24h)",
    )


def _existing_file(flag: str) -> Any:
    def parse(value: str) -> Path:
        path = Path(value)
        if not path.is_file():
            raise pytest.UsageError(f"{flag}: no such file: {value}")
        return path

    return parse


def _positive_float(flag: str) -> Any:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise pytest.UsageError(f"{flag}: {value!r} is not a number") from None
        if number <= 0:
            raise pytest.UsageError(f"{flag}: must be positive, got {value}")
        return number

    return parse


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in LEVEL_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    config.addinivalue_line(
        "markers", "scenario(*ids): the spec scenario IDs (specs/scenarios.yaml) this test verifies"
    )
    config.addinivalue_line(
        "markers", "requires(*capabilities): SUT capabilities the test needs (not applicable otherwise)"
    )
    config.addinivalue_line(
        "markers",
        "perf_long: a benchmark that runs only when perf is asked for (-m perf), not in the default run",
    )
    path = config.getoption("sut") or DEFAULT_MANIFEST
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        raise pytest.UsageError(f"--sut: {exc}") from None
    unknown = sorted(sid for sid in manifest.known_failures if sid not in catalogue_module.load())
    if unknown:
        raise pytest.UsageError(f"--sut: [known_failures] names {unknown[0]!r}, which is not a scenario ID")
    config.stash[MANIFEST_KEY] = manifest
    config.stash[RESULTS_KEY] = RunResults(sut_name=manifest.name, sut_digest=manifest.digest)
    config.pluginmanager.register(_Recorder(config), "conformance-recorder")
    if config.getoption("grpc_trace"):
        from harness import trace

        trace.install()
        config.add_cleanup(trace.uninstall)


def scenario_ids(item: pytest.Item) -> list[str]:
    ids: list[str] = []
    for mark in item.iter_markers("scenario"):
        ids.extend(str(arg) for arg in mark.args)
    return ids


def item_levels(item: pytest.Item) -> list[str]:
    return [name for name in LEVEL_MARKERS if item.get_closest_marker(name) is not None]


def _explicit_markexpr(config: pytest.Config) -> str:
    return str(config.getoption("markexpr") or "")


def perf_mode(config: pytest.Config) -> str:
    """'full' when the run asked for perf explicitly (-m perf), 'quick' otherwise."""
    return "full" if "perf" in _explicit_markexpr(config) else "quick"


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    listing = config.getoption("list_scenarios")
    if listing is not None:
        records = [
            {
                "nodeid": item.nodeid,
                "path": str(item.path),
                "scenarios": scenario_ids(item),
                "levels": item_levels(item),
            }
            for item in items
        ]
        listing.write_text(json.dumps(records, indent=1), encoding="utf-8")

    known_failures = config.stash[MANIFEST_KEY].known_failures
    selectors: list[str] = config.getoption("scenario")
    markexpr = _explicit_markexpr(config)
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        ids = scenario_ids(item)
        for sid in ids:
            item.user_properties.append(("scenario", sid))
        listed = [sid for sid in ids if sid in known_failures]
        if listed:
            # strict: a known failure that passes fails the run, so the list cannot go stale
            reason = f"known failure {listed[0]}: {known_failures[listed[0]]}"
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        if selectors and not any(_matches(sid, sel) for sid in ids for sel in selectors):
            dropped.append(item)
        elif "soak" not in markexpr and item.get_closest_marker("soak") is not None:
            dropped.append(item)  # soak runs only when asked for: -m soak
        elif "perf" not in markexpr and item.get_closest_marker("perf_long") is not None:
            dropped.append(item)  # too noisy for a quick form on a shared 2-core machine: -m perf
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _matches(scenario_id: str, selector: str) -> bool:
    return scenario_id == selector or scenario_id.startswith(selector + ".")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.config.getoption("grpc_trace"):
        from harness.trace import TRACER

        TRACER.clear()
    marker = item.get_closest_marker("requires")
    if marker is None:
        return
    manifest = item.config.stash[MANIFEST_KEY]
    missing = [cap for cap in marker.args if not manifest.has_capability(str(cap))]
    if missing:
        pytest.skip(f"{NOT_APPLICABLE} SUT {manifest.name!r} does not claim {', '.join(missing)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if not coverage.is_uninstrumented(item):
        return (yield)
    with coverage.uninstrumented():  # benchmarks measure the code, not a tracer
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and report.when == "call" and item.config.getoption("grpc_trace"):
        from harness.trace import write_trace

        mock = getattr(item, "funcargs", {}).get("mock_exchange")
        upstream = mock.call_log() if mock is not None and hasattr(mock, "call_log") else None
        path = write_trace(
            item.config.getoption("report_dir") / "traces", item.nodeid, scenario_ids(item), upstream
        )
        report.sections.append(("gRPC trace", f"written to {path}"))
    return report


class _Recorder:
    """Gathers outcomes and figures as tests finish; writes the report (controller only)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results = config.stash[RESULTS_KEY]
        self._last_save = 0.0

    @property
    def _is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ids = [str(v) for k, v in report.user_properties if k == "scenario"]
        for key, value in report.user_properties:
            if key == "metric" and report.when == "call":
                self.results.add_metric(Metric(**json.loads(str(value))))
        outcome = _classify(report)
        if outcome is None:
            return
        status, reason = outcome
        self.results.add_outcome(TestOutcome(report.nodeid, ids, status, reason, report.duration))
        self._save_progress()

    def _save_progress(self) -> None:
        """Keep the JSON report current while the run goes on, so an interrupted run leaves its results."""
        now = time.monotonic()
        if self._is_worker or now - self._last_save < 2.0:
            return
        self._last_save = now
        report_dir: Path = self.config.getoption("report_dir")
        self.results.write_json(report_dir / "conformance-report.json", catalogue_module.load())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._is_worker or self.config.getoption("collectonly") or not self.results.outcomes:
            return
        from harness.report.markdown import write_reports

        self._record_coverage()
        write_reports(self.results, catalogue_module.load(), self.config.getoption("report_dir"))

    def _record_coverage(self) -> None:
        # a selection's coverage says nothing about the spec's criterion: only a run that judges
        # coverage (--cov-fail-under, as a whole ./test run) fills the §10 row
        if getattr(self.config.option, "cov_fail_under", None) is None:
            return
        total = coverage.measured_total(self.config)
        if total is not None:
            self.results.add_metric(Metric("coverage_pct", round(total, 2), "%", ["10.4"], "pytest-cov"))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._is_worker or not self.results.scenario_status():
            return
        from harness.report.markdown import summary_lines

        terminalreporter.section("conformance: per-scenario summary")
        for line in summary_lines(self.results, catalogue_module.load()):
            terminalreporter.write_line(line)


def _classify(report: pytest.TestReport) -> tuple[str, str] | None:
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            if report.passed:  # strict xfail that passed: the known-failures list is stale
                return "failed", f"listed as a known failure but passed: {report.wasxfail}"
            return "known-failure", str(report.wasxfail)
        if report.failed:
            return "failed", _reason(report)
        if report.skipped:
            return _skip(report)
        return "passed", ""
    if report.when == "setup" and report.failed:
        return "error", _reason(report)
    if report.when == "setup" and report.skipped:
        return _skip(report)
    if report.when == "teardown" and report.failed:
        return "error", "teardown: " + _reason(report)
    return None


def _skip(report: pytest.TestReport) -> tuple[str, str]:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason.startswith(NOT_APPLICABLE):
        return "not-applicable", reason[len(NOT_APPLICABLE) :].strip()
    return "skipped", reason


def _reason(report: pytest.TestReport) -> str:
    """The failure's own message (the crash line), not an exception it was raised from."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return str(message).splitlines()[0][:300]
    text = report.longreprtext.strip()
    return text.splitlines()[-1][:300] if text else ""


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sut(pytestconfig: pytest.Config) -> Manifest:
    """The system under test: the programs named by --sut (the reference by default)."""
    return pytestconfig.stash[MANIFEST_KEY]


@pytest.fixture
def free_port() -> Any:
    """A callable that returns a loopback port free right now and not handed to another test."""
    from harness.ports import free_port as allocate

    return allocate


class MetricRecorder:
    """Records measured figures; they reach the conformance report and the results file."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    def record(self, name: str, value: float, unit: str = "") -> None:
        metric = Metric(name, float(value), unit, scenario_ids(self._item), self._item.nodeid)
        self._item.user_properties.append(("metric", json.dumps(metric.__dict__)))
        print(f"[metric] {name} = {value:.4g} {unit}")


@pytest.fixture
def metrics(request: pytest.FixtureRequest) -> MetricRecorder:
    """Record a measured figure: metrics.record("get_account_p50_ms", 0.41, "ms")."""
    return MetricRecorder(request.node)


@pytest.fixture
def load_duration(pytestconfig: pytest.Config) -> float:
    chosen = pytestconfig.getoption("load_duration")
    if chosen is not None:
        return float(chosen)
    return 300.0 if perf_mode(pytestconfig) == "full" else 20.0


@pytest.fixture
def run_mode(pytestconfig: pytest.Config) -> str:
    """'full' under -m perf, 'quick' in the default run."""
    return perf_mode(pytestconfig)


@pytest.fixture
def soak_duration(pytestconfig: pytest.Config) -> float:
    from harness.perf.durations import parse_duration

    if os.environ.get("SOAK_TEST") != "1":
        pytest.skip("environment: set SOAK_TEST=1 to run the soak test")
    return parse_duration(str(pytestconfig.getoption("soak_duration")))


__all__ = ["MetricRecorder", "item_levels", "scenario_ids"]
