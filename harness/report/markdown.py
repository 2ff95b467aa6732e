"""The conformance report in Markdown (with the spec's §10 table), and the run's terminal summary."""

from __future__ import annotations

from harness.catalogue import Catalogue
from harness.outcomes import FAILING, Status
from harness.report.json_report import render_json
from harness.report.results import RunResults

SUBJECT_HEADINGS = {
    "sut": "## Scenarios",
    "suite": "## The suite's own checks (§4.3; not counted for the SUT)",
}
_MARK = {status.value: status.label for status in Status} | {"pending": "PENDING", "not-run": "-"}


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
        reason = f"  ({outcome.reason})" if outcome.reason and outcome.outcome != Status.PASSED else ""
        shown = outcome.outcome not in (Status.PASSED, Status.NOT_APPLICABLE, Status.SKIPPED)
        figures = f"  [{_figures(outcome.figures)}]" if outcome.figures and shown else ""
        lines.append(f"{_MARK[outcome.outcome]:<12} {scenario.id:<10} {scenario.title}{reason}{figures}")
    lines.append("scenarios: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if counts.get(Status.INCONCLUSIVE):
        lines.append(
            f"{counts[Status.INCONCLUSIVE]} scenario(s) INCONCLUSIVE: the host could not measure them; "
            "rerun on a quieter machine (--rerun-failed reports/conformance-report.json)"
        )
    if counts.get(Status.HUNG):
        lines.append(
            f"{counts[Status.HUNG]} scenario(s) HUNG: ran past their time budget; their programs were stopped "
            "or killed, the rest of the run went on (logs and trace: conformance-report.json, tests)"
        )
    return lines


def _figures(figures: dict[str, object]) -> str:
    return ", ".join(
        f"{key} {value:.3g}"
        if isinstance(value, float)
        else f"{key}: {len(value.splitlines())} lines in the JSON report"
        if isinstance(value, str) and "\n" in value
        else f"{key} {value}"
        for key, value in figures.items()
    )


def render_markdown(results: RunResults, catalogue: Catalogue) -> str:
    data = render_json(results, catalogue)
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
    for row in data["criteria"]:
        out.append(f"| {row['title']} | {row['target']} | {row['measured']} | {row['status']} |")
    for subject, heading in SUBJECT_HEADINGS.items():
        rows = [row for row in data["scenarios"] if row["subject"] == subject]
        if not rows:
            continue
        out += ["", heading, "", "| ID | Level | Title | Status | Reason |", "|---|---|---|---|---|"]
        for row in rows:
            reason = str(row["reason"]).replace("|", "\\|")
            out.append(
                f"| {row['id']} | {row['level']} | {row['title']} | {_MARK[row['status']]} | {reason} |"
            )
    out += _status_by_section(data["scenarios"])
    out += _ratios(results)
    if results.metrics:
        out += ["", "## Measured figures", "", "| Metric | Value | Scenario | Test |", "|---|---|---|---|"]
        for metric in results.metrics:
            out.append(
                f"| {metric.name} | {metric.value:.4g} {metric.unit} | {', '.join(metric.scenario_ids)} | {metric.nodeid} |"
            )
    return "\n".join(out) + "\n"


def _status_by_section(scenarios: list[dict[str, object]]) -> list[str]:
    """The HTML status grid's counts: per spec section, how many scenarios ended how."""
    counted: dict[str, dict[str, int]] = {}
    for row in scenarios:
        if row["subject"] == "sut":
            section = counted.setdefault(str(row["section"]), {})
            section[str(row["status"])] = section.get(str(row["status"]), 0) + 1
    out = [
        "",
        "## Status by spec section",
        "",
        "| Section | Passed | Failed | Inconclusive | Known failure | N/A | Not run |",
    ]
    out.append("|---|---|---|---|---|---|---|")
    for name in sorted(counted, key=lambda s: tuple(int(p) if p.isdigit() else 0 for p in s.split("."))):
        c = counted[name]
        out.append(
            f"| §{name} | {c.get('passed', 0)} | {sum(c.get(f.value, 0) for f in FAILING)} | "
            f"{c.get('inconclusive', 0)} | {c.get('known-failure', 0)} | {c.get('not-applicable', 0)} | "
            f"{c.get('not-run', 0) + c.get('pending', 0) + c.get('skipped', 0)} |"
        )
    return out


def _ratios(results: RunResults) -> list[str]:
    """Each figure measured as a ratio to a baseline in this run (`*_ratio`): bare grpcio or the relay."""
    latest = {
        m.name: m for m in results.metrics if m.name.endswith("_ratio") and not m.name.startswith("soak_")
    }
    if not latest:
        return []
    out = ["", "## Against the baselines (same run)", "", "| Ratio | Value | Baseline |", "|---|---|---|"]
    for name in sorted(latest):
        baseline = "relay" if "_relay_" in name else "bare grpcio"
        out.append(f"| {name} | {latest[name].value:.3g} x | {baseline} |")
    return out
