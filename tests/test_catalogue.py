"""The meta-test: the scenario catalogue and the tests under specs/ agree, both ways."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness import catalogue as catalogue_module
from harness.agreement import check_agreement
from harness.catalogue import CatalogueError, parse

ROOT = Path(__file__).resolve().parent.parent
SUT_MANIFEST_DOC = ROOT / "docs" / "sut-manifest.md"
# "- **C12** text ..." and "- **L20** (5.1.1.x30) text ...", continued on indented lines
RULE_HEADING = re.compile(r"^- \*\*([CMLDHS][0-9]+)\*\*(.*)$")
# "4.2.1.x7", and a range of letters joined by an en dash, "5.1.1.c\u2013e" (c, d and e)
SCENARIO_REF = re.compile("\\b([0-9]+\\.[0-9]+\\.[0-9]+)\\.([a-z]+[0-9]*)(?:\u2013([a-z]))?")


def collect_records(tmp_path: Path, *paths: str) -> list[dict[str, object]]:
    listing = tmp_path / "scenarios.json"
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "-p", "no:xdist"]
    command += ["--list-scenarios", str(listing), *paths]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"collecting {paths} failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
    records: list[dict[str, object]] = json.loads(listing.read_text())
    return records


def test_catalogue_is_well_formed() -> None:
    catalogue = catalogue_module.load()
    ids = [s.id for s in catalogue.scenarios]
    assert len(ids) == len(set(ids)), "duplicate IDs"
    testable = list(catalogue.testable())
    assert 60 <= len(testable) <= 130, f"expected roughly 60-130 testable IDs, got {len(testable)}"
    sections = {s.section for s in catalogue.scenarios}
    for section in ("3.1", "3.2", "4.1", "4.2", "4.3", "5.1", "5.2", "6.1", "6.2", "6.3", "7.1", "10"):
        assert section in sections, f"spec section {section} has no scenario in the catalogue"


@pytest.mark.timeout(180)
def manifest_rules(text: str) -> dict[str, list[str]]:
    """Each numbered rule of docs/sut-manifest.md with the scenario IDs its text names, in order."""
    texts: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        heading = RULE_HEADING.match(line)
        if heading:
            current = heading.group(1)
            texts[current] = heading.group(2)
        elif current is not None and line.startswith("  ") and line.strip():
            texts[current] += " " + line.strip()
        else:
            current = None
    rules: dict[str, list[str]] = {}
    for rule, body in texts.items():
        ids: list[str] = []
        for ref in SCENARIO_REF.finditer(body):
            base, first, last = ref.groups()
            letters = [chr(c) for c in range(ord(first), ord(last) + 1)] if last else [first]
            ids += [f"{base}.{letter}" for letter in letters if f"{base}.{letter}" not in ids]
        rules[rule] = ids
    return rules


def test_manifest_rules_are_parsed() -> None:
    text = "- **C4** reaches every subscriber (4.2.1.a, 5.1.1.c\u2013e).\n- **L20** (5.1.1.x30) An HTTP\n  connection (L24).\n\n"
    assert manifest_rules(text) == {"C4": ["4.2.1.a", "5.1.1.c", "5.1.1.d", "5.1.1.e"], "L20": ["5.1.1.x30"]}


def test_every_rule_a_scenario_names_exists() -> None:
    rules = manifest_rules(SUT_MANIFEST_DOC.read_text(encoding="utf-8"))
    assert len(rules) > 80, f"expected the manifest's rules, parsed {len(rules)} from {SUT_MANIFEST_DOC}"
    wrong = [
        f"scenario {scenario.id} names rule {rule}, which docs/sut-manifest.md does not define"
        for scenario in catalogue_module.load().scenarios
        for rule in scenario.rules
        if rule not in rules
    ]
    assert not wrong, "\n".join(wrong)


def test_every_rule_is_named_by_the_scenarios_it_names() -> None:
    catalogue = catalogue_module.load()
    rules = manifest_rules(SUT_MANIFEST_DOC.read_text(encoding="utf-8"))
    wrong: list[str] = []
    for rule, ids in rules.items():
        for sid in ids:
            scenario = catalogue.get(sid)
            if scenario is None:
                wrong.append(f"docs/sut-manifest.md: rule {rule} names {sid}, which is not in the catalogue")
            elif rule not in scenario.rules:
                wrong.append(
                    f"docs/sut-manifest.md: rule {rule} names {sid}, but the catalogue's rules for {sid} "
                    f"are {list(scenario.rules)} (add {rule})"
                )
    for scenario in catalogue.scenarios:
        for rule in scenario.rules:
            named = rules.get(rule)
            if named is not None and scenario.id not in named:
                wrong.append(
                    f"specs/scenarios.yaml: {scenario.id} names rule {rule}, but the rule in "
                    f"docs/sut-manifest.md names only {named}"
                )
    assert not wrong, "\n".join(wrong)


def test_catalogue_and_tests_agree(tmp_path: Path) -> None:
    records = collect_records(tmp_path, "specs")
    problems = check_agreement(records, catalogue_module.load())
    assert not problems, "catalogue and tests disagree:\n" + "\n".join(problems)


def test_no_scenario_is_left_pending() -> None:
    pending = [s.id for s in catalogue_module.load().testable() if s.pending]
    assert not pending, f"scenarios still pending: {', '.join(pending)}"


def test_catalogue_counts_by_level_and_section(capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = catalogue_module.load()
    by_level = Counter(s.level or "criterion" for s in catalogue.scenarios)
    by_section = Counter(s.section for s in catalogue.scenarios)
    print("by level:", dict(sorted(by_level.items())))
    print("by section:", dict(sorted(by_section.items(), key=lambda kv: [int(p) for p in kv[0].split(".")])))
    assert sum(by_level.values()) == len(catalogue.scenarios)


# ---------------------------------------------------------------------------------- the meta-test fails


FAKE_CATALOGUE = """
spec: {title: fake, version: "1"}
scenarios:
  - {id: 9.1.1.a, section: "9.1", level: unit, title: one, criterion: MUST one}
  - {id: 9.1.1.b, section: "9.1", level: integration, title: two, criterion: MUST two}
  - {id: 9.1.1.c, section: "9.1", level: unit, title: three, criterion: MUST three, pending: true}
"""


def _fake_catalogue() -> catalogue_module.Catalogue:
    import yaml

    return parse(yaml.safe_load(FAKE_CATALOGUE))


def test_meta_check_fails_on_a_wrong_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_wrong="""
        import pytest

        @pytest.mark.unit
        @pytest.mark.scenario("9.1.1.a")
        def test_good(): pass

        @pytest.mark.integration
        @pytest.mark.scenario("9.9.9.z")
        def test_wrong_id():
            assert True
        """
    )
    listing = pytester.path / "records.json"
    result = pytester.runpytest(
        "--collect-only", "-q", "--list-scenarios", str(listing), "-p", "no:randomly", "-p", "no:asyncio"
    )
    assert result.ret == 0
    problems = check_agreement(json.loads(listing.read_text()), _fake_catalogue())
    assert any("9.9.9.z" in p and "not in specs/scenarios.yaml" in p for p in problems), problems
    assert any(p.startswith("9.1.1.b: no test carries") for p in problems), problems
    assert not any(p.startswith("9.1.1.c") for p in problems), f"a pending ID needs no test: {problems}"


def test_meta_check_fails_on_a_level_mismatch_and_a_missing_marker() -> None:
    records = [
        {"nodeid": "t.py::a", "scenarios": ["9.1.1.a"], "levels": ["e2e"]},
        {"nodeid": "t.py::b", "scenarios": [], "levels": ["unit"]},
        {"nodeid": "t.py::c", "scenarios": ["9.1.1.b", "9.1.1.c"], "levels": ["integration"]},
    ]
    problems = check_agreement(records, _fake_catalogue())
    assert any("t.py::a" in p and "differs from the catalogue level" in p for p in problems), problems
    assert any("t.py::b" in p and "no @pytest.mark.scenario" in p for p in problems), problems
    assert any("9.1.1.c: marked pending" in p for p in problems), problems
    assert len(problems) == 3 or any("9.1.1.c" in p for p in problems), problems


def test_meta_check_passes_when_all_agree() -> None:
    records = [
        {"nodeid": "t.py::a", "scenarios": ["9.1.1.a"], "levels": ["unit"]},
        {"nodeid": "t.py::b", "scenarios": ["9.1.1.b"], "levels": ["integration"]},
    ]
    assert check_agreement(records, _fake_catalogue()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scenarios: 3", "must be a mapping with a 'scenarios' list"),
        ("scenarios: [{id: 1.1.1.a, section: '1', title: t, criterion: c, level: fast}]", "level 'fast'"),
        (
            "scenarios: [{id: a, section: '1', title: t, criterion: c, level: unit}, {id: a, section: '1', title: t, criterion: c, level: unit}]",
            "duplicate id",
        ),
        ("scenarios: [{id: a, section: '1', level: unit}]", "missing title, criterion"),
    ],
)
def test_malformed_catalogue_is_rejected(text: str, message: str) -> None:
    import yaml

    with pytest.raises(CatalogueError, match=message):
        parse(yaml.safe_load(text))
