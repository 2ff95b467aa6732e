"""The conformance report: JSON and Markdown (with the spec's §10 table), and the run summary."""

from __future__ import annotations

from pathlib import Path

from harness.catalogue import Catalogue, Scenario
from harness.report.results import RunResults

_MARK = {
    "passed": "PASS",
    "failed": "FAIL",
    "error": "ERROR",
    "skipped": "SKIP",
    "not-applicable": "N/A",
    "known-failure": "KNOWN",
    "pending": "PENDING",
    "not-run": "-",
}


def summary_lines(results: RunResults, catalogue: Catalogue) -> list[str]:
    """One line per scenario that ran, then counts by status."""
    status = results.scenario_status()
    lines = []
    counts: dict[str, int] = {}
    for scenario in catalogue.scenarios:
        outcome = status.get(scenario.id)
        if outcome is None:
            continue
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        reason = f"  ({outcome.reason})" if outcome.reason and outcome.outcome != "passed" else ""
        lines.append(f"{_MARK[outcome.outcome]:<7} {scenario.id:<10} {scenario.title}{reason}")
    lines.append("scenarios: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return lines


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


def render_markdown(results: RunResults, catalogue: Catalogue) -> str:
    data = results.to_json(catalogue)
    env = data["environment"]
    out = [
        f"# Conformance report: {results.sut_name}",
        "",
        f"Spec: {catalogue.spec.get('title', '')} v{catalogue.spec.get('version', '')}  ",
        f"Python {env['python']}, grpcio {env['grpcio']}, {env['cpus']} CPUs, {env['system']}  ",
        f"Manifest sha256: `{results.sut_digest[:16]}`, run took {data['duration_s']:.1f} s",
        "",
        "## Success criteria (spec §10)",
        "",
        "| Criterion | Target | Measured | Status |",
        "|---|---|---|---|",
    ]
    for criterion, measured, verdict in criteria_rows(results, catalogue):
        target = (
            str(criterion.target)
            if criterion.target
            else "100 %"
            if "pass" in criterion.title
            else "verified"
        )
        out.append(f"| {criterion.title} | {target} | {measured} | {verdict} |")
    out += ["", "## Scenarios", "", "| ID | Level | Title | Status | Reason |", "|---|---|---|---|---|"]
    for row in data["scenarios"]:
        if row["kind"] != "scenario":
            continue
        reason = str(row["reason"]).replace("|", "\\|")
        out.append(f"| {row['id']} | {row['level']} | {row['title']} | {_MARK[row['status']]} | {reason} |")
    if results.metrics:
        out += ["", "## Measured figures", "", "| Metric | Value | Scenario | Test |", "|---|---|---|---|"]
        for metric in results.metrics:
            out.append(
                f"| {metric.name} | {metric.value:.4g} {metric.unit} | {', '.join(metric.scenario_ids)} | {metric.nodeid} |"
            )
    return "\n".join(out) + "\n"


def write_reports(results: RunResults, catalogue: Catalogue, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    results.write_json(directory / "conformance-report.json", catalogue)
    (directory / "conformance-report.md").write_text(render_markdown(results, catalogue), encoding="utf-8")
    from harness.report.html import render_html

    (directory / "conformance-report.html").write_text(render_html(results, catalogue), encoding="utf-8")
