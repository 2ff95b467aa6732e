"""The fault catalogue (faults.yaml): each fault, what it breaks, where to look and what must catch it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import catalogue as scenario_catalogue

FAULTS_PATH = Path(__file__).resolve().parent / "faults.yaml"


class FaultCatalogueError(ValueError):
    """faults.yaml is malformed; the message names the fault and the problem."""


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    select: tuple[str, ...]  # --scenario selectors of the run
    # scenario IDs that must be reported failed or error (a selected test may carry IDs the selectors
    # do not name, e.g. 4.2.1.a's test also verifies 4.2.1.ac1)
    caught_by: tuple[str, ...]
    slow: bool = False


def load_faults(path: Path = FAULTS_PATH) -> dict[str, Fault]:
    """The faults by name, in the file's order; every ID checked against specs/scenarios.yaml."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = raw.get("faults") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise FaultCatalogueError(f"{path}: expected a non-empty mapping 'faults'")
    scenarios = scenario_catalogue.load()
    faults = {}
    for name, entry in entries.items():
        where = f"{path.name}: fault {name!r}"
        if not isinstance(entry, dict):
            raise FaultCatalogueError(f"{where}: expected a mapping")
        select = tuple(str(s) for s in entry.get("select") or ())
        caught_by = tuple(str(s) for s in entry.get("caught_by") or ())
        if not entry.get("description") or not select or not caught_by:
            raise FaultCatalogueError(f"{where}: needs description, select and caught_by")
        for selector in select:
            if not scenarios.select(selector):
                raise FaultCatalogueError(f"{where}: selector {selector!r} names no scenario")
        for sid in caught_by:
            if sid not in scenarios:
                raise FaultCatalogueError(f"{where}: {sid!r} is not a scenario ID")
        faults[str(name)] = Fault(
            str(name), " ".join(str(entry["description"]).split()), select, caught_by, bool(entry.get("slow"))
        )
    return faults


def is_timed(selector: str) -> bool:
    """True when every scenario the selector names judges time: a performance measurement (level
    perf) or a timing-bounded scenario (`timing: true`). A run of it needs the machine to itself: a
    second suite run beside it is a busy neighbour, and its verdict would be INCONCLUSIVE."""
    selected = scenario_catalogue.load().select(selector)
    return bool(selected) and all(s.level == "perf" or s.timing for s in selected)


__all__ = ["FAULTS_PATH", "Fault", "FaultCatalogueError", "is_timed", "load_faults"]
