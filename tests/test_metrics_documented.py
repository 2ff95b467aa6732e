"""Every metric a scenario reads is in the metrics table of docs/sut-manifest.md, with the rules that
read it, and every metric the table says a scenario reads is read by one: no unwritten rules. None
that a scenario needs is named after one runtime."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_DOC = ROOT / "docs" / "sut-manifest.md"
READERS = [*sorted((ROOT / "specs").rglob("*.py")), *sorted((ROOT / "harness" / "sut").glob("*.py"))]
PREFIX = "exchange_connector_"
READING_CALLS = {"metric", "required_metric", "wait_metric", "sample_value", "sample_total"}
RUNTIME_WORDS = re.compile(r"asyncio|python|goroutine|nodejs|jvm|tokio", re.I)


def documented() -> tuple[set[str], set[str]]:
    """(metrics a scenario needs, metrics read only where present) from the table's first column."""
    text = MANIFEST_DOC.read_text(encoding="utf-8")
    table = text.split("#### Metrics the suite reads", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    needed: set[str] = set()
    optional: set[str] = set()
    for row in table.splitlines()[2:]:
        first = row.split(" | ")[0]
        names = {re.sub(r"\{.*", "", name) for name in re.findall(r"`([a-z_]+(?:\{[^`]*\})?)`", first)}
        (optional if "where present" in first else needed).update(names)
    return needed, optional


def read_by_scenarios(paths: list[Path]) -> set[str]:
    """Metric names in the readers' calls (metric("subscribers", ...) means exchange_connector_
    subscribers) and in tuples named *_GAUGES."""
    found: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                literals = [
                    a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
                if name in READING_CALLS and literals and re.fullmatch(r"[a-z_]+", literals[0]):
                    metric = literals[0]
                    found.add(metric if "_" in metric and not name.endswith("metric") else _full(metric))
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if any(t.endswith("_GAUGES") for t in targets):
                    found.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return found


def _full(name: str) -> str:
    return name if name.startswith(PREFIX) or not name.islower() else PREFIX + name


def test_every_metric_a_scenario_reads_is_documented_and_every_documented_one_is_read() -> None:
    needed, optional = documented()
    read = read_by_scenarios(READERS)
    undocumented = sorted(read - needed - optional)
    assert not undocumented, (
        f"read by a scenario but not in docs/sut-manifest.md's metrics table: {undocumented}"
    )
    unread = sorted((needed | optional) - read)
    assert not unread, f"the metrics table says a scenario reads these, but none does: {unread}"


def test_no_needed_metric_is_named_after_a_runtime() -> None:
    needed, _ = documented()
    named = sorted(name for name in needed if RUNTIME_WORDS.search(name))
    assert not named, f"metrics every implementation must export may not be named after a runtime: {named}"


def test_the_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    source = tmp_path / "t.py"
    source.write_text(
        "CONCURRENCY_GAUGES = ('go_goroutines',)\n"
        "async def f(c):\n    await c.metric('data_age_seconds')\n    await c.wait_metric('subscribers', {}, 1, 1)\n"
    )
    assert read_by_scenarios([source]) == {
        "go_goroutines",
        "exchange_connector_data_age_seconds",
        "exchange_connector_subscribers",
    }
    needed, optional = documented()
    assert "exchange_connector_subscribers" in needed and "go_goroutines" in optional
