"""The clause table agrees with the rules, the faults and the document that shows it.

Every rule of docs/sut-manifest.md is split into clauses in specs/faulty/clauses/*.yaml; every
fault of faults.yaml breaks at least one clause; and the table in docs/fault-catch-table.md is the
one those files render (`python tools/fault_table.py --clauses` rewrites it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from specs.faulty.catalogue import FaultCatalogueError, load_faults
from specs.faulty.clauses import (
    END,
    START,
    clause_section,
    load_clauses,
    render_clauses,
    replace_clause_section,
)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_DOC = ROOT / "docs" / "sut-manifest.md"
TABLE_DOC = ROOT / "docs" / "fault-catch-table.md"
RULE_BULLET = re.compile(r"^- \*\*([A-Z]\d+)\*\*", re.MULTILINE)

pytestmark = pytest.mark.timeout(60)


def test_every_rule_of_the_manifest_is_split_into_clauses_and_no_other() -> None:
    documented = set(RULE_BULLET.findall(MANIFEST_DOC.read_text(encoding="utf-8")))
    listed = {clause.rule for clause in load_clauses()}
    assert not documented - listed, f"rules with no clauses: {sorted(documented - listed)}"
    assert not listed - documented, (
        f"clauses of rules docs/sut-manifest.md does not have: {sorted(listed - documented)}"
    )


def test_every_fault_breaks_a_clause() -> None:
    named = {name for clause in load_clauses() for name in clause.faults}
    unplaced = [name for name in load_faults() if name not in named]
    assert not unplaced, f"faults of faults.yaml that no clause names: {unplaced}"


def test_the_document_shows_the_table_the_clauses_render() -> None:
    shown = clause_section(TABLE_DOC.read_text(encoding="utf-8"))
    expected = render_clauses(load_clauses(), load_faults())
    assert shown is not None, (
        f"{TABLE_DOC.name} has no clause table; run: python tools/fault_table.py --clauses"
    )
    assert shown == expected, (
        f"{TABLE_DOC.name}'s clause table is out of date; run: python tools/fault_table.py --clauses"
    )


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "rules.yaml").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  C2:\n    - clause: x\n      faults: [reorder]\n      gap: y\n",
            "either 'faults' or 'gap'",
        ),
        ("rules:\n  C2:\n    - clause: x\n", "either 'faults' or 'gap'"),
        ("rules:\n  C2:\n    - clause: x\n      faults: [no-such-fault]\n", "not a fault of faults.yaml"),
        ("rules:\n  C2: []\n", "needs a list of clauses"),
        ("rules:\n  9C:\n    - clause: x\n      gap: y\n", "is not a rule ID"),
    ],
)
def test_a_malformed_clause_file_is_refused_with_its_place(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(FaultCatalogueError, match=re.escape(message)):
        load_clauses(_write(tmp_path / "clauses", text))


def test_a_rule_listed_in_two_files_is_refused(tmp_path: Path) -> None:
    folder = _write(tmp_path / "clauses", "rules:\n  C2:\n    - clause: x\n      gap: y\n")
    (folder / "more.yaml").write_text("rules:\n  C2:\n    - clause: z\n      gap: y\n", encoding="utf-8")
    with pytest.raises(FaultCatalogueError, match="listed twice"):
        load_clauses(folder)


def test_the_table_counts_its_gaps_and_numbers_clauses_by_their_place(tmp_path: Path) -> None:
    text = (
        "rules:\n  D1:\n    - clause: d\n      gap: none yet\n"
        "  C2:\n    - clause: a\n      faults: [reorder]\n    - clause: b\n      gap: none yet\n"
    )
    clauses = load_clauses(_write(tmp_path / "clauses", text))
    assert [c.id for c in clauses] == ["C2.1", "C2.2", "D1.1"]
    table = render_clauses(clauses, load_faults())
    assert "**3 clauses of 2 rules: 1 broken by a fault that the suite catches, 2 gaps.**" in table
    assert "| C2.1 | a | `reorder` | 4.2.1.a, 4.2.1.ac1, 4.2.1.ac2, 4.2.1.b |" in table
    assert "| C2.2 | b | **gap:** none yet | |" in table


def test_replacing_the_table_keeps_the_rest_of_the_document() -> None:
    def section(body: str) -> str:
        return f"{START}\n{body}\n{END}\n"

    document = "# Title\n\nintro\n\n## Later\n\ntext\n"
    first = replace_clause_section(document, section("A"))
    assert first == f"# Title\n\nintro\n\n{section('A')}\n## Later\n\ntext\n"
    assert replace_clause_section(first, section("B")) == first.replace("\nA\n", "\nB\n")
