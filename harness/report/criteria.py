"""The spec's §10 success-criteria table, computed once from a run's results for every report format.

A row judged by a figure (latency, throughput, memory, coverage) compares the figure with the
spec's target. A row judged by scenarios ("unit tests pass") counts the scenarios the SUT is
judged on: the suite's own self-checks (catalogue `subject: suite`, §4.3) are never among them, and
the row says how many were not applicable, skipped for an environment limit, or not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.catalogue import Catalogue, Scenario
from harness.outcomes import FAILING, Status
from harness.report.results import RunResults


@dataclass(frozen=True)
class CriterionRow:
    criterion: Scenario
    target: str
    measured: str
    verdict: str  # PASS | FAIL | not run
    counts: dict[str, int] = field(default_factory=dict)


def criteria_rows(results: RunResults, catalogue: Catalogue) -> list[CriterionRow]:
    """The spec's §10 table, one row per criterion, in the catalogue's order."""
    status = results.scenario_status()
    rows = []
    for criterion in (s for s in catalogue.scenarios if s.kind == "criterion"):
        target = (
            str(criterion.target)
            if criterion.target
            else ("100 %" if "pass" in criterion.title else "verified")
        )
        measured, verdict, counts = "", "not run", {}
        if criterion.target is not None:
            metric = results.metric(criterion.target.metric)
            if metric is not None:
                measured = f"{metric.value:.4g} {metric.unit}".strip()
                verdict = "PASS" if criterion.target.holds(metric.value) else "FAIL"
        if not measured:
            members = _members(criterion, catalogue)
            outcomes = [status[m.id].outcome if m.id in status else "not-run" for m in members]
            counts = {name: outcomes.count(name) for name in dict.fromkeys(outcomes)}
            if members:
                measured, verdict = _count_line(counts)
        rows.append(CriterionRow(criterion, target, measured or "-", verdict, counts))
    return rows


def _count_line(counts: dict[str, int]) -> tuple[str, str]:
    passed = counts.get(Status.PASSED, 0)
    failed = sum(counts.get(status, 0) for status in FAILING)
    known = counts.get(Status.KNOWN_FAILURE, 0)
    inconclusive = counts.get(Status.INCONCLUSIVE, 0)
    applicable = passed + failed + known + inconclusive
    parts = [f"{passed}/{applicable} applicable scenarios passed"]
    for name, label in (
        ("inconclusive", "inconclusive (the host could not measure)"),
        ("known-failure", "known failures"),
        ("not-applicable", "not applicable"),
        ("skipped", "skipped (environment)"),
        ("not-run", "not run"),
    ):
        if counts.get(name):
            parts.append(f"{counts[name]} {label}")
    line = parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")
    verdict = (
        "FAIL" if failed or known else "INCONCLUSIVE" if inconclusive else ("PASS" if passed else "not run")
    )
    return line, verdict


def _members(criterion: Scenario, catalogue: Catalogue) -> list[Scenario]:
    rule = criterion.derived_from
    judged = [s for s in catalogue.testable() if s.subject == "sut"]
    if "ids" in rule:
        wanted = {str(i) for i in rule["ids"]}
        return [s for s in judged if s.id in wanted]
    if "level" in rule:
        return [s for s in judged if s.level == rule["level"]]
    if "section" in rule:
        return [s for s in judged if s.section == str(rule["section"])]
    return []
