"""What the monitoring tests share: the shipped rule file, dashboard and runbook, the PromQL in them
(parsed by promql-parser) and the metrics the reference exports (read from its own registries)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "exchange-connector.json"
DOCS = ROOT / "docs" / "deployment.md"
RUNBOOK_PREFIX = "docs/deployment.md#"
# series Prometheus makes itself for every target, not exported by any program
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Grafana variables in the dashboard's queries, with values PromQL can parse
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def promtool() -> str:
    """The promtool command (Debian's prometheus package); the test skips where it is missing."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "environment: promtool not found (Debian's prometheus package: apt-get install prometheus; "
            ".ci/run installs it)"
        )
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Rule:
    group: str
    name: str  # the alert's or the recorded series' name
    expr: str
    alert: bool
    raw: dict[str, Any]


def rules() -> list[Rule]:
    found = []
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            alert = "alert" in rule
            found.append(Rule(group["name"], rule["alert" if alert else "record"], rule["expr"], alert, rule))
    return found


def alerts() -> list[Rule]:
    return [rule for rule in rules() if rule.alert]


def recorded() -> dict[str, str]:
    """Recording rule name -> its expression."""
    return {rule.name: rule.expr for rule in rules() if not rule.alert}


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector in a PromQL expression (ValueError when it does not parse)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def calls(expr: str) -> list[str]:
    """The names of the functions an expression calls."""
    found: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.Call):
            found.append(node.func.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _matchers(selector: promql_parser.VectorSelector) -> list[promql_parser.Matcher]:
    return list(selector.matchers.matchers) if selector.matchers is not None else []


def selector_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return str(selector.name)
    for matcher in _matchers(selector):
        if matcher.name == "__name__":
            return str(matcher.value)
    raise ValueError(f"a selector without a metric name: {selector}")


def label_values(expr: str, label: str) -> set[str]:
    """The values an expression's selectors match `label` against."""
    return {
        str(matcher.value)
        for selector in selectors(expr)
        for matcher in _matchers(selector)
        if matcher.name == label
    }


def metric_names(expr: str, records: dict[str, str] | None = None) -> set[str]:
    """The metric names an expression reads; recorded series are followed to the metrics they
    come from when `records` is given."""
    names = set()
    for selector in selectors(expr):
        name = selector_name(selector)
        if records is not None and name in records:
            names |= metric_names(records[name], records)
        else:
            names.add(name)
    return names


def grafana_expr(expr: str) -> str:
    """A dashboard query as PromQL: Grafana's interval variables replaced by durations."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard's panels."""
    return [
        (str(panel.get("title")), grafana_expr(str(target["expr"])))
        for panel in dashboard_panels(board)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_sections(level: int = 3) -> list[tuple[str, str, str]]:
    """(parent `##` heading, heading, text up to the next heading of that level or higher) of
    every heading of `level` in docs/deployment.md, outside code blocks."""
    sections: list[tuple[str, str, str]] = []
    parent, current = "", None
    text: list[str] = []
    in_code = False
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"^(#{1,6}) (.*)$", line) if not in_code else None
        if heading and len(heading.group(1)) <= level:
            if current is not None:
                sections.append((parent, current, "\n".join(text)))
            current, text = (heading.group(2), []) if len(heading.group(1)) == level else (None, [])
            if len(heading.group(1)) < level:
                parent = heading.group(2)
            continue
        if current is not None:
            text.append(line)
    if current is not None:
        sections.append((parent, current, "\n".join(text)))
    return sections


def doc_anchors() -> set[str]:
    return {github_anchor(heading) for level in (2, 3, 4) for _, heading, _ in doc_sections(level)}


def watched_metrics() -> list[str]:
    """The metric names of the first column of the docs' "### Metrics" table (what to watch)."""
    _, _, text = next(section for section in doc_sections() if section[1] == "Metrics")
    names = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        names += [
            re.sub(r"\{.*\}", "", name) for name in re.findall(r"`([a-z_:]+(?:\{[^}]*\})?)`", first_cell)
        ]
    return names


def _sample_names(families: Iterable[Any]) -> set[str]:
    names = set()
    for family in families:
        kind, name = family.type, family.name
        if kind == "counter":
            names |= {name + "_total", name + "_created"}
        elif kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        elif kind == "summary":
            names |= {name, name + "_sum", name + "_count", name + "_created"}
        else:
            names.add(name)
        names |= {sample.name for sample in family.samples}
    return names


def exported_metrics() -> dict[str, set[str]]:
    """The series names each reference program's registry exports (families with no sample yet,
    such as labelled counters never incremented, included): {"exchange_connector": ..., "live_server": ...}."""
    from implementation.adapters.mock import MockExchange
    from implementation.connector.metrics import MetricsServer
    from implementation.connector_core.server import ExchangeServer
    from implementation.live_server.feed import Broadcaster
    from implementation.live_server.metrics import LiveServerMetrics
    from implementation.state import LiveState

    async def connector() -> set[str]:
        # made as the program makes it (implementation/connector/__main__.py), inside its running
        # loop: the task gauge and the shared-call counters are exported too
        server = ExchangeServer(MockExchange())
        metrics = MetricsServer(
            server.hub, stats=server.stats, positions=server.positions_calls, refused=server.refused
        )
        return _sample_names(metrics.registry.collect())

    live = LiveServerMetrics(LiveState(), Broadcaster())
    return {
        "exchange_connector": asyncio.run(connector()),
        "live_server": _sample_names(live.registry.collect()),
    }
