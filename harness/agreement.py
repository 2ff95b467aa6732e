"""Do the scenario catalogue and the tests agree? Used by the meta-test (tests/test_catalogue.py).

Input: the records `pytest --collect-only --list-scenarios FILE` writes, one per collected test:
{"nodeid", "path", "scenarios": [...], "levels": [...]}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.catalogue import Catalogue


def check_agreement(records: Iterable[Mapping[str, Any]], catalogue: Catalogue) -> list[str]:
    """Every disagreement, one line each; empty when catalogue and tests agree both ways."""
    problems: list[str] = []
    tested: set[str] = set()
    for record in records:
        nodeid = str(record["nodeid"])
        ids = [str(i) for i in record["scenarios"]]
        levels = [str(level) for level in record["levels"]]
        if not ids:
            problems.append(f"{nodeid}: carries no @pytest.mark.scenario(...) ID")
            continue
        if len(levels) != 1:
            problems.append(f"{nodeid}: expected exactly one level marker, got {levels or 'none'}")
        for sid in ids:
            scenario = catalogue.get(sid)
            if scenario is None:
                problems.append(f"{nodeid}: names scenario {sid!r}, which is not in specs/scenarios.yaml")
                continue
            if not scenario.needs_test:
                problems.append(
                    f"{nodeid}: names {sid}, a {scenario.kind} that is derived, not tested directly"
                )
                continue
            tested.add(sid)
            if levels and scenario.level not in levels:
                problems.append(
                    f"{nodeid}: level marker {'/'.join(levels)} differs from the catalogue level of {sid}: {scenario.level}"
                )
    for scenario in catalogue.testable():
        if scenario.id in tested and scenario.pending:
            problems.append(
                f"{scenario.id}: marked pending in the catalogue but a test carries it; drop 'pending'"
            )
        elif scenario.id not in tested and not scenario.pending:
            problems.append(f"{scenario.id}: no test carries this catalogue ID ({scenario.title})")
    for scenario in catalogue.scenarios:
        for sid in scenario.derived_from.get("ids", []):
            if str(sid) not in catalogue:
                problems.append(f"{scenario.id}: derived from {sid}, which is not in the catalogue")
    return problems
