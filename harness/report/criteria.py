"""The spec's §10 success-criteria table, computed once from a run's results for every report format."""

from __future__ import annotations

from harness.catalogue import Catalogue, Scenario
from harness.report.results import RunResults


def criteria_rows(results: RunResults, catalogue: Catalogue) -> list[tuple[Scenario, str, str]]:
    """The spec's §10 table: (criterion, measured value, status)."""
    status = results.scenario_status()
    rows = []
    for criterion in (s for s in catalogue.scenarios if s.kind == "criterion"):
        measured, verdict = "", "not run"
        if criterion.target is not None:
            metric = results.metric(criterion.target.metric)
            if metric is not None:
                measured = f"{metric.value:.4g} {metric.unit}".strip()
                verdict = "PASS" if criterion.target.holds(metric.value) else "FAIL"
        if not measured:
            members = _members(criterion, catalogue)
            ran = [status[m.id] for m in members if m.id in status]
            if ran:
                passed = sum(1 for r in ran if r.outcome == "passed")
                failed = sum(1 for r in ran if r.outcome in ("failed", "error"))
                applicable = sum(1 for r in ran if r.outcome not in ("not-applicable", "skipped"))
                measured = f"{passed}/{applicable} applicable scenarios passed"
                if applicable < len(ran):
                    measured += f" ({len(ran) - applicable} not applicable or skipped)"
                verdict = "FAIL" if failed else ("PASS" if passed else "not run")
        rows.append((criterion, measured or "-", verdict))
    return rows


def _members(criterion: Scenario, catalogue: Catalogue) -> list[Scenario]:
    rule = criterion.derived_from
    if "ids" in rule:
        wanted = {str(i) for i in rule["ids"]}
        return [s for s in catalogue.testable() if s.id in wanted]
    if "level" in rule:
        return [s for s in catalogue.testable() if s.level == rule["level"]]
    if "section" in rule:
        return [s for s in catalogue.testable() if s.section == str(rule["section"])]
    return []
