"""--list and --explain ID: the selected scenarios, or one scenario's rules, criterion and target."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import catalogue as catalogue_module
from harness.markers import scenario_ids

SUT_MANIFEST_DOC = Path(__file__).resolve().parent.parent / "docs" / "sut-manifest.md"
RULE_LINE = re.compile(r"^- \*\*([CMLDHS][0-9]+)\*\* (.*)$")


def rule_texts(path: Path = SUT_MANIFEST_DOC) -> dict[str, str]:
    """Each numbered rule of docs/sut-manifest.md and its text (empty when the file is absent)."""
    if not path.is_file():
        return {}
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = RULE_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def capabilities(items: list[pytest.Item]) -> dict[str, list[str]]:
    """Each scenario ID and the capabilities its tests need (their `requires` markers)."""
    needed: dict[str, list[str]] = {}
    for item in items:
        caps = [str(cap) for marker in item.iter_markers("requires") for cap in marker.args]
        for sid in scenario_ids(item):
            needed.setdefault(sid, [])
            needed[sid].extend(cap for cap in caps if cap not in needed[sid])
    return needed


def listing(items: list[pytest.Item]) -> list[str]:
    catalogue = catalogue_module.load()
    needed = capabilities(items)
    lines = [f"{'ID':<11} {'LEVEL':<12} {'RULES':<14} {'NEEDS':<18} TITLE"]
    for scenario in catalogue.scenarios:
        if scenario.id not in needed:
            continue
        rules = ",".join(scenario.rules) or "-"
        caps = ",".join(needed[scenario.id]) or "-"
        mark = " [alone]" if scenario.exclusive else ""
        lines.append(
            f"{scenario.id:<11} {scenario.level or '-':<12} {rules:<14} {caps:<18} {scenario.title}{mark}"
        )
    lines.append(f"{len(lines) - 1} scenario(s); [alone]: runs alone, after the parallel ones")
    return lines


def explanation(scenario_id: str, items: list[pytest.Item]) -> list[str]:
    catalogue = catalogue_module.load()
    scenario = catalogue.get(scenario_id)
    if scenario is None:
        raise pytest.UsageError(f"--explain: {scenario_id!r} is not a scenario ID of specs/scenarios.yaml")
    texts = rule_texts()
    tests = [item.nodeid for item in items if scenario_id in scenario_ids(item)]
    lines = [
        f"{scenario.id}  {scenario.title}",
        f"section {scenario.section}, level {scenario.level or '-'}"
        + (", runs alone" if scenario.exclusive else "")
        + (", timing-bounded (measured beside the host)" if scenario.timing else "")
        + f", time budget {scenario.time_budget_s:g} s",
        "",
        "What it does (its criterion):",
        f"  {scenario.criterion}",
        "",
        "What it measures (its target):",
        f"  {scenario.target.metric} {scenario.target}"
        if scenario.target
        else "  no figure: a pass/fail check",
        "",
        "Rules (docs/sut-manifest.md):",
    ]
    for rule in scenario.rules:
        lines.append(f"  {rule}: {texts.get(rule, '(docs/sut-manifest.md is not on this host)')}")
    if not scenario.rules:
        lines.append("  none named; the spec's own text")
    caps = capabilities(items).get(scenario_id, [])
    lines += ["", f"Needs: {', '.join(caps) or 'no capability beyond the core'}"]
    lines += ["Tests:", *(f"  {nodeid}" for nodeid in tests or ["(none collected)"])]
    return lines


def wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("list_catalogue") or config.getoption("explain"))


def show(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Writes the listing or the explanation, and leaves no test to run."""
    scenario_id = config.getoption("explain")
    lines = explanation(str(scenario_id), items) if scenario_id else listing(items)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)
    items[:] = []


__all__ = ["explanation", "listing", "rule_texts", "show", "wanted"]
