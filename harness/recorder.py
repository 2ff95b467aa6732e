"""Gathers each test's outcome and figures as the run goes, and writes the reports (controller only)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness import catalogue as catalogue_module
from harness.outcomes import decide
from harness.report import compare, coverage
from harness.report.json_report import write_json
from harness.report.markdown import summary_lines
from harness.report.results import Metric, RunResults, TestOutcome
from harness.report.writer import write_reports
from harness.rerun import chosen as rerun_ids

SAVE_EVERY_S = 2.0


class Recorder:
    """Registered as a plugin by harness.plugin; holds the run's RunResults."""

    def __init__(self, config: pytest.Config, results: RunResults) -> None:
        self.config = config
        self.results = results
        self._last_save = 0.0
        self._comparison: list[str] = []

    @property
    def _is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @property
    def _report_dir(self) -> Path:
        return Path(self.config.getoption("report_dir"))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ids = [str(v) for k, v in report.user_properties if k == "scenario"]
        rerun = rerun_ids(self.config)
        if rerun is not None:  # a rerun reports exactly the IDs it reran
            ids = [sid for sid in ids if sid in rerun]
        for key, value in report.user_properties:
            if key == "metric" and report.when == "call":
                self.results.add_metric(Metric(**json.loads(str(value))))
        # a test of the project's own (tests/) has no scenario: its outcome is recorded under none
        decided = decide(report, ids or [report.nodeid])
        if decided is None:
            return
        for sid, outcome in decided.items():
            self.results.add_outcome(
                TestOutcome(
                    report.nodeid,
                    [sid] if ids else [],
                    outcome.status,
                    outcome.reason,
                    report.duration,
                    outcome.figures,
                )
            )
        self._save_progress()

    def _save_progress(self) -> None:
        """Keep the JSON report current while the run goes on, so an interrupted run leaves its results."""
        now = time.monotonic()
        if self._is_worker or now - self._last_save < SAVE_EVERY_S:
            return
        self._last_save = now
        write_json(self.results, self._report_dir / "conformance-report.json", catalogue_module.load())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._is_worker or self.config.getoption("collectonly") or not self.results.outcomes:
            return
        self._record_coverage()
        previous = self._previous_report()  # read first: it may be the report about to be rewritten
        write_reports(self.results, catalogue_module.load(), self._report_dir)
        if previous is not None:
            current = json.loads((self._report_dir / "conformance-report.json").read_text(encoding="utf-8"))
            comparison = compare.compare(previous, current, str(self.config.getoption("compare")))
            compare.write(comparison, self._report_dir)
            self._comparison = compare.lines(comparison)
            if comparison.regressions and session.exitstatus == 0:
                session.exitstatus = 1  # a scenario regression fails the run (see --compare)

    def _previous_report(self) -> dict[str, Any] | None:
        path = self.config.getoption("compare")
        if path is None:
            return None
        try:
            return compare.load(Path(path))
        except ValueError as error:
            raise pytest.UsageError(f"--compare: {error}") from None

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
        terminalreporter.section("conformance: per-scenario summary")
        for line in summary_lines(self.results, catalogue_module.load()):
            terminalreporter.write_line(line)
        if self._comparison:
            terminalreporter.section("conformance: changes since the compared report")
            for line in self._comparison:
                terminalreporter.write_line(line)
