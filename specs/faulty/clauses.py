"""The clause table: every rule of docs/sut-manifest.md split into its clauses (each testable
sentence), and for each clause the faults of faults.yaml that break it, or why none does yet.

The clauses live in specs/faulty/clauses/*.yaml, one file per family of rules:

    rules:
      C2:
        - clause: one upstream subscription per topic, however many clients subscribe
          faults: [upstream-per-client]
        - clause: each upstream subscription is opened once while the upstream stays up
          gap: no fault reopens a subscription while the upstream stays up

A clause is numbered by its place under its rule (C2.1, C2.2). It names the faults that break it
(each fault ideally breaks that clause alone), or it is a gap and says why. The table in
docs/fault-catch-table.md is rendered from these files and faults.yaml; tests/test_clause_table.py
keeps the two in agreement, and the rules in agreement with docs/sut-manifest.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from specs.faulty.catalogue import Fault, FaultCatalogueError, load_faults

CLAUSES_DIR = Path(__file__).resolve().parent / "clauses"
START = "<!-- clause table: rendered from specs/faulty/clauses/*.yaml by tools/fault_table.py -->"
END = "<!-- end of the clause table -->"
# the order of the families in the table, as in docs/sut-manifest.md
FAMILIES = ("C", "M", "L", "D", "H", "S")
_RULE_ID = re.compile(r"^([A-Z])(\d+)$")


@dataclass(frozen=True)
class Clause:
    rule: str
    number: int
    says: str
    faults: tuple[str, ...]
    gap: str  # why no fault breaks it yet; empty when faults do

    @property
    def id(self) -> str:
        return f"{self.rule}.{self.number}"


def rule_order(rule: str) -> tuple[int, int]:
    match = _RULE_ID.match(rule)
    if match is None:
        raise FaultCatalogueError(f"{rule!r} is not a rule ID (a letter and a number, e.g. C9)")
    return FAMILIES.index(match.group(1)) if match.group(1) in FAMILIES else len(FAMILIES), int(
        match.group(2)
    )


def load_clauses(folder: Path = CLAUSES_DIR, faults: dict[str, Fault] | None = None) -> list[Clause]:
    """Every clause of every file, in the rules' order; each fault name checked against faults.yaml."""
    known = load_faults() if faults is None else faults
    by_rule: dict[str, list[Clause]] = {}
    for path in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        rules = raw.get("rules") if isinstance(raw, dict) else None
        if not isinstance(rules, dict):
            raise FaultCatalogueError(f"{path.name}: expected a mapping 'rules'")
        for rule, entries in rules.items():
            rule = str(rule)
            rule_order(rule)
            if rule in by_rule:
                raise FaultCatalogueError(f"{path.name}: rule {rule} is listed twice")
            if not isinstance(entries, list) or not entries:
                raise FaultCatalogueError(f"{path.name}: rule {rule} needs a list of clauses")
            by_rule[rule] = [
                _clause(path.name, rule, number, entry, known) for number, entry in enumerate(entries, 1)
            ]
    return [clause for rule in sorted(by_rule, key=rule_order) for clause in by_rule[rule]]


def _clause(file: str, rule: str, number: int, entry: object, known: dict[str, Fault]) -> Clause:
    where = f"{file}: {rule}.{number}"
    if not isinstance(entry, dict) or not entry.get("clause"):
        raise FaultCatalogueError(f"{where}: expected a mapping with 'clause'")
    faults = tuple(str(name) for name in entry.get("faults") or ())
    gap = " ".join(str(entry.get("gap") or "").split())
    if bool(faults) == bool(gap):
        raise FaultCatalogueError(f"{where}: give either 'faults' or 'gap' (why no fault breaks it yet)")
    for name in faults:
        if name not in known:
            raise FaultCatalogueError(f"{where}: {name!r} is not a fault of faults.yaml")
    return Clause(rule, number, " ".join(str(entry["clause"]).split()), faults, gap)


def render_clauses(clauses: list[Clause], faults: dict[str, Fault]) -> str:
    """The clause table, between its markers, as it stands in docs/fault-catch-table.md."""
    rules = sorted({c.rule for c in clauses}, key=rule_order)
    gaps = [c for c in clauses if c.gap]
    out = [
        START,
        "## Clauses",
        "",
        f"**{len(clauses)} clauses of {len(rules)} rules: {len(clauses) - len(gaps)} broken by a fault "
        f"that the suite catches, {len(gaps)} gaps.**",
        "",
    ]
    for family in FAMILIES:
        in_family = [c for c in clauses if c.rule.startswith(family)]
        if not in_family:
            continue
        family_gaps = sum(1 for c in in_family if c.gap)
        out += [
            f"### {family} rules: {len(in_family)} clauses, {family_gaps} gaps",
            "",
            "| Clause | What it says | Faults that break it | Must be caught by |",
            "|---|---|---|---|",
        ]
        for clause in in_family:
            if clause.gap:
                out.append(f"| {clause.id} | {_cell(clause.says)} | **gap:** {_cell(clause.gap)} | |")
                continue
            catching = sorted({sid for name in clause.faults for sid in faults[name].caught_by})
            named = ", ".join(f"`{name}`" for name in clause.faults)
            out.append(f"| {clause.id} | {_cell(clause.says)} | {named} | {', '.join(catching)} |")
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def clause_section(document: str) -> str | None:
    """The clause table as it stands in a document, markers included; None when it has none."""
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        return None
    return document[start : end + len(END)] + "\n"


def replace_clause_section(document: str, section: str) -> str:
    """The document with its clause table replaced (or placed before its first `## ` heading)."""
    current = clause_section(document)
    if current is not None:
        start = document.find(START)
        return document[:start] + section + document[start + len(current) :]
    heading = document.find("\n## ")
    at = len(document) if heading < 0 else heading + 1
    return document[:at] + section + "\n" + document[at:]


__all__ = [
    "CLAUSES_DIR",
    "Clause",
    "clause_section",
    "load_clauses",
    "render_clauses",
    "replace_clause_section",
    "rule_order",
]
