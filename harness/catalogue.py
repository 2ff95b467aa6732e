"""The scenario catalogue (specs/scenarios.yaml): loading and validating it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CATALOGUE_PATH = Path(__file__).resolve().parent.parent / "specs" / "scenarios.yaml"
LEVELS = ("unit", "integration", "e2e", "perf", "soak")
SUBJECTS = ("sut", "suite")
RULE_ID = re.compile(r"[CMLDHS][0-9]+")
# A scenario's time budget when the catalogue names none: past it, the scenario is HUNG.
DEFAULT_BUDGET_S = {"unit": 60.0, "integration": 120.0, "e2e": 180.0, "perf": 900.0, "soak": 90000.0}


class CatalogueError(ValueError):
    """The catalogue file is malformed."""


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float
    unit: str

    def holds(self, measured: float) -> bool:
        ops = {
            "<": measured < self.value,
            "<=": measured <= self.value,
            ">": measured > self.value,
            ">=": measured >= self.value,
            "==": measured == self.value,
        }
        return ops[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.value:g} {self.unit}".strip()


@dataclass(frozen=True)
class Scenario:
    id: str
    section: str
    title: str
    criterion: str
    level: str | None = None  # None for derived success criteria (kind == "criterion")
    kind: str = "scenario"
    target: Target | None = None
    pending: bool = False
    retired: bool = False
    choice: str | None = None
    subject: str = "sut"  # "suite": a self-check of the suite (§4.3's mock exchange), not of the SUT
    derived_from: dict[str, Any] = field(default_factory=dict)
    rules: tuple[str, ...] = ()  # the numbered rules of docs/sut-manifest.md it checks
    exclusive: bool = False  # judges timing or resources, or stops processes: runs alone
    timing: bool = False  # has a time bound a starved host can break: measured beside (harness.timing)
    budget_s: float | None = None  # past this the scenario is HUNG (default: by level)

    @property
    def time_budget_s(self) -> float:
        if self.budget_s is not None:
            return self.budget_s
        return DEFAULT_BUDGET_S.get(self.level or "", 120.0)

    @property
    def needs_test(self) -> bool:
        return self.kind == "scenario" and not self.retired

    def in_selection(self, selector: str) -> bool:
        """True when `selector` (a section such as "4.2", or an ID) names this scenario."""
        return self.id == selector or self.id.startswith(selector + ".") or self.section == selector


@dataclass(frozen=True)
class Catalogue:
    spec: dict[str, Any]
    scenarios: tuple[Scenario, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {s.id: s for s in self.scenarios})

    def get(self, scenario_id: str) -> Scenario | None:
        by_id: dict[str, Scenario] = self._by_id  # type: ignore[attr-defined]
        return by_id.get(scenario_id)

    def __contains__(self, scenario_id: object) -> bool:
        return isinstance(scenario_id, str) and self.get(scenario_id) is not None

    def select(self, selector: str) -> list[Scenario]:
        return [s for s in self.scenarios if s.in_selection(selector)]

    def testable(self) -> Iterable[Scenario]:
        return (s for s in self.scenarios if s.needs_test)


def _parse_target(raw: Any, where: str) -> Target | None:
    if raw is None:
        return None
    try:
        target = Target(str(raw["metric"]), str(raw["op"]), float(raw["value"]), str(raw.get("unit", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogueError(f"{where}: target needs metric, op and a numeric value ({exc})") from exc
    if target.op not in ("<", "<=", ">", ">=", "=="):
        raise CatalogueError(f"{where}: target op {target.op!r} is not one of < <= > >= ==")
    return target


def parse(data: Any) -> Catalogue:
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise CatalogueError("catalogue must be a mapping with a 'scenarios' list")
    seen: set[str] = set()
    scenarios = []
    for index, raw in enumerate(data["scenarios"]):
        where = f"scenarios[{index}]"
        if not isinstance(raw, dict) or "id" not in raw:
            raise CatalogueError(f"{where}: every entry needs an 'id'")
        sid = str(raw["id"])
        where = f"scenario {sid}"
        if sid in seen:
            raise CatalogueError(f"{where}: duplicate id")
        seen.add(sid)
        missing = [key for key in ("section", "title", "criterion") if not raw.get(key)]
        if missing:
            raise CatalogueError(f"{where}: missing {', '.join(missing)}")
        kind = raw.get("kind", "scenario")
        subject = str(raw.get("subject", "sut"))
        if subject not in SUBJECTS:
            raise CatalogueError(f"{where}: subject {subject!r} is not one of {', '.join(SUBJECTS)}")
        level = raw.get("level")
        if kind == "scenario" and level not in LEVELS:
            raise CatalogueError(f"{where}: level {level!r} is not one of {', '.join(LEVELS)}")
        rules = tuple(str(rule) for rule in raw.get("rules") or ())
        bad = [rule for rule in rules if not RULE_ID.fullmatch(rule)]
        if bad:
            raise CatalogueError(f"{where}: rule {bad[0]!r} is not a rule ID such as C4 or D30")
        budget = raw.get("budget_s")
        if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
            raise CatalogueError(f"{where}: budget_s must be a positive number of seconds, got {budget!r}")
        scenarios.append(
            Scenario(
                id=sid,
                section=str(raw["section"]),
                title=str(raw["title"]),
                criterion=str(raw["criterion"]),
                level=level,
                kind=kind,
                target=_parse_target(raw.get("target"), where),
                pending=bool(raw.get("pending", False)),
                retired=bool(raw.get("retired", False)),
                choice=raw.get("choice"),
                subject=subject,
                derived_from=dict(raw.get("from") or {}),
                rules=rules,
                exclusive=bool(raw.get("exclusive", False)),
                timing=bool(raw.get("timing", False)),
                budget_s=None if budget is None else float(budget),
            )
        )
    return Catalogue(spec=dict(data.get("spec") or {}), scenarios=tuple(scenarios))


@cache
def load(path: Path = CATALOGUE_PATH) -> Catalogue:
    with path.open(encoding="utf-8") as handle:
        return parse(yaml.safe_load(handle))
