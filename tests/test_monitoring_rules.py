"""The shipped monitoring (deploy/prometheus, deploy/grafana, docs/deployment.md §4-§5) holds
together: promtool checks the rules and runs their unit tests, every alert has a runbook section
and every runbook section its alert, every metric the rules and the dashboard read is one the
reference exports, and every metric the docs tell operators to watch has a rule or a panel."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from specs.unit.test_compose_file import _with_defaults
from tests.monitoring import (
    DOCS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    RULE_TESTS,
    RULES,
    RUNBOOK_PREFIX,
    SYNTHETIC,
    alerts,
    calls,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    doc_anchors,
    doc_sections,
    exported_metrics,
    github_anchor,
    label_values,
    load_yaml,
    metric_names,
    promtool,
    recorded,
    rules,
    watched_metrics,
)

pytestmark = pytest.mark.timeout(60)

RUNBOOK_SECTION = "5. Runbook"
SEVERITIES = {"critical", "warning"}
RATE_FUNCTIONS = {"rate", "irate", "increase"}
GRAFANA_COLUMNS = 24
COMPOSE_FILE = ROOT / "docker-compose.grpc.yml"
LIVE_SERVER_COMPOSE_CONFIG = ROOT / "docker" / "config" / "live_server.yaml"


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=50, check=False
    )


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return exported_metrics()


@pytest.fixture(scope="module")
def all_exported(exported: dict[str, set[str]]) -> set[str]:
    return set().union(*exported.values())


# ---------------------------------------------------------------------- promtool


def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0, f"promtool check rules {RULES}:\n{done.stdout}{done.stderr}"
    assert f"{len(rules())} rules found" in done.stdout, done.stdout


def test_promtool_checks_the_compose_prometheus_config() -> None:
    done = _promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert done.returncode == 0, f"promtool check config {PROMETHEUS_CONFIG}:\n{done.stdout}{done.stderr}"


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, f"expected promtool unit tests in {PROMETHEUS_DIR / 'tests'}, found none"
    done = _promtool("test", "rules", *(str(path) for path in RULE_TESTS))
    assert done.returncode == 0, f"promtool test rules:\n{done.stdout}{done.stderr}"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: Counter[str] = Counter()
    silent: Counter[str] = Counter()
    for path in RULE_TESTS:
        document = load_yaml(path)
        assert [(path.parent / name).resolve() for name in document["rule_files"]] == [RULES], (
            f"{path.name}: expected rule_files to name {RULES}, got {document['rule_files']}"
        )
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent)[case["alertname"]] += 1
    names = {alert.name for alert in alerts()}
    assert not names - set(firing), f"alerts never tested firing: {sorted(names - set(firing))}"
    assert not names - set(silent), f"alerts never tested not firing: {sorted(names - set(silent))}"
    unknown = (set(firing) | set(silent)) - names
    assert not unknown, f"unit tests of alerts the rule file does not have: {sorted(unknown)}"


# ---------------------------------------------------------------------- the rules themselves


def test_every_alert_has_a_severity_a_summary_and_a_runbook_url() -> None:
    problems = []
    for alert in alerts():
        labels, annotations = alert.raw.get("labels", {}), alert.raw.get("annotations", {})
        if labels.get("severity") not in SEVERITIES:
            problems.append(
                f"{alert.name}: severity {labels.get('severity')!r}, expected one of {SEVERITIES}"
            )
        for key in ("summary", "description"):
            if not annotations.get(key):
                problems.append(f"{alert.name}: no {key} annotation")
        url = str(annotations.get("runbook_url", ""))
        if not url.startswith(RUNBOOK_PREFIX):
            problems.append(f"{alert.name}: runbook_url {url!r} does not start with {RUNBOOK_PREFIX!r}")
    names = [alert.name for alert in alerts()]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    assert not duplicates, f"alerts defined twice: {duplicates}"
    assert not problems, "\n".join(problems)


def test_the_alerts_the_issue_asks_for_exist() -> None:
    """Not serving, upstream connections, data age and lag, drops and sheds, refusals, token
    rejections, live_server stale or disconnected, restart loops: each watched by an alert."""
    by_metric: dict[str, set[str]] = {}
    for alert in alerts():
        for name in metric_names(alert.expr, recorded()):
            by_metric.setdefault(name, set()).add(alert.name)
    for metric in (
        "exchange_connector_serving",
        "exchange_connector_upstream_connections",
        "exchange_connector_data_age_seconds",
        "exchange_connector_upstream_lag_seconds",
        "exchange_connector_subscribers_dropped_total",
        "exchange_connector_overload_sheds_total",
        "exchange_connector_calls_refused_total",
        "exchange_connector_auth_rejected_total",
        "live_server_connected",
        "live_server_last_update_timestamp_seconds",
        "process_start_time_seconds",
    ):
        assert by_metric.get(metric), f"no alert reads {metric}"
    restart_jobs = set().union(
        *(label_values(alert.expr, "job") for alert in alerts() if "changes" in calls(alert.expr))
    )
    assert restart_jobs == {"exchange_connector", "live_server"}, (
        f"expected restart-loop alerts for both programs, got jobs {sorted(restart_jobs)}"
    )


def test_the_scrape_jobs_the_rules_select_are_the_shipped_configs() -> None:
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    selected = set().union(*(label_values(rule.expr, "job") for rule in rules()))
    assert selected <= jobs, (
        f"the rules select jobs {sorted(selected - jobs)} that {PROMETHEUS_CONFIG.name} lacks"
    )
    assert jobs == {"exchange_connector", "live_server"}, f"unexpected scrape jobs {sorted(jobs)}"


# ---------------------------------------------------------------------- runbook <-> alerts


def test_every_alert_has_a_runbook_section_and_every_runbook_section_its_alert() -> None:
    runbook = {
        github_anchor(heading): (heading, text)
        for parent, heading, text in doc_sections()
        if parent == RUNBOOK_SECTION
    }
    assert runbook, f"no sections under '## {RUNBOOK_SECTION}' in {DOCS}"
    problems = []
    pointed: dict[str, list[str]] = {}
    for alert in alerts():
        anchor = str(alert.raw["annotations"]["runbook_url"]).removeprefix(RUNBOOK_PREFIX)
        pointed.setdefault(anchor, []).append(alert.name)
        if anchor not in runbook:
            problems.append(
                f"{alert.name}: runbook_url anchor #{anchor} is no section of '{RUNBOOK_SECTION}'"
            )
            continue
        heading, text = runbook[anchor]
        if alert.name not in heading and f"`{alert.name}`" not in text:
            problems.append(f"{alert.name}: its runbook section '{heading}' does not name it")
    for anchor, (heading, _) in runbook.items():
        if anchor not in pointed:
            problems.append(f"runbook section '{heading}' (#{anchor}) is the runbook_url of no alert")
    assert not problems, "\n".join(problems)


def test_the_docs_links_within_the_page_resolve() -> None:
    anchors = doc_anchors()
    text = DOCS.read_text(encoding="utf-8")
    broken = sorted({link for link in re.findall(r"\]\(#([^)]+)\)", text) if link not in anchors})
    assert not broken, f"links to no heading of {DOCS.name}: {broken}"


# ---------------------------------------------------------------------- metrics


def test_every_metric_the_rules_read_is_exported(
    exported: dict[str, set[str]], all_exported: set[str]
) -> None:
    records = recorded()
    missing = {}
    for rule in rules():
        names = metric_names(rule.expr) - set(records) - SYNTHETIC
        jobs = label_values(rule.expr, "job")
        wanted = set().union(*(exported[job] for job in jobs)) if jobs else all_exported
        if names - wanted:
            missing[rule.name] = sorted(names - wanted)
    assert not missing, f"rules read metrics the reference does not export: {missing}"


def test_every_metric_the_dashboard_reads_is_exported_or_recorded(all_exported: set[str]) -> None:
    records = recorded()
    missing = {}
    for title, expr in dashboard_queries(dashboard()):
        names = metric_names(expr)
        unknown = {name for name in names if name not in records and name not in all_exported | SYNTHETIC}
        if unknown:
            missing[title] = sorted(unknown)
    assert not missing, f"dashboard panels read series neither exported nor recorded: {missing}"


def test_the_dashboard_reads_its_rates_from_the_recording_rules() -> None:
    raw = [
        (title, expr) for title, expr in dashboard_queries(dashboard()) if set(calls(expr)) & RATE_FUNCTIONS
    ]
    assert not raw, f"panels computing rates themselves instead of reading a recording rule: {raw}"
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard())))
    unused = sorted(set(recorded()) - used)
    assert not unused, f"recording rules no panel shows: {unused}"


def test_every_metric_the_docs_say_to_watch_has_a_rule_or_a_panel(all_exported: set[str]) -> None:
    watched = watched_metrics()
    assert len(watched) >= 20, f"expected the docs' metrics table, found only {watched}"
    records = recorded()
    covered = set().union(
        *(metric_names(rule.expr, records) for rule in rules()),
        *(metric_names(expr, records) for _, expr in dashboard_queries(dashboard())),
    )
    not_exported = sorted(set(watched) - all_exported)
    assert not not_exported, (
        f"the docs tell operators to watch metrics the reference does not export: {not_exported}"
    )
    uncovered = sorted(set(watched) - covered)
    assert not uncovered, f"the docs tell operators to watch metrics no rule and no panel reads: {uncovered}"


# ---------------------------------------------------------------------- the dashboard


def test_the_dashboard_is_a_grafana_dashboard_model() -> None:
    board = dashboard()
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list)):
        assert isinstance(board.get(key), kind), f"dashboard: expected {key} of type {kind.__name__}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"]), (
        f"dashboard uid {board['uid']!r} is not a Grafana uid"
    )
    variables = {var["name"]: var for var in board.get("templating", {}).get("list", [])}
    assert variables.get("datasource", {}).get("type") == "datasource", "expected a `datasource` variable"
    panels = list(dashboard_panels(board))
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids not unique: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title, grid = panel.get("title"), panel.get("gridPos") or {}
        assert panel.get("type") in {"row", "stat", "timeseries", "gauge", "table", "bargauge", "text"}, (
            f"panel {title!r}: unexpected type {panel.get('type')!r}"
        )
        assert all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")), (
            f"panel {title!r}: gridPos {grid}"
        )
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= GRAFANA_COLUMNS, (
            f"panel {title!r} is wider than the grid"
        )
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {title!r} overlap at {(x, y)}"
                cells[(x, y)] = str(title)
        if panel["type"] == "row":
            continue
        targets = panel.get("targets") or []
        assert targets, f"panel {title!r} has no query"
        refs = [target.get("refId") for target in targets]
        assert len(set(refs)) == len(refs), f"panel {title!r}: refIds not unique: {refs}"
        for source in [panel.get("datasource"), *(target.get("datasource") for target in targets)]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, (
                f"panel {title!r}: expected the `datasource` variable as data source, got {source}"
            )
        for target in targets:
            for name in re.findall(r"\$\{?(\w+)", str(target["expr"])):
                assert name in variables or f"${name}" in {"$__rate_interval", "$__interval", "$__range"}, (
                    f"panel {title!r}: query uses an undefined variable ${name}"
                )


def test_every_dashboard_query_parses() -> None:
    for title, expr in dashboard_queries(dashboard()):
        try:
            metric_names(expr)
        except ValueError as error:
            raise AssertionError(f"panel {title!r}: {expr!r} is not PromQL: {error}") from None


def test_the_dashboard_covers_the_areas_operators_watch() -> None:
    rows = [panel["title"] for panel in dashboard()["panels"] if panel.get("type") == "row"]
    for area in ("Connector health", "Upstream", "Clients", "Deliveries", "Latency and age", "live_server"):
        assert area in rows, f"expected a dashboard row {area!r}, got rows {rows}"


# ---------------------------------------------------------------------- compose


def test_the_compose_monitoring_profile_runs_prometheus_with_the_rules() -> None:
    compose: dict[str, Any] = _with_defaults(load_yaml(COMPOSE_FILE))
    prometheus = compose["services"]["prometheus"]
    assert prometheus.get("profiles") == ["monitoring"], (
        f"expected the prometheus service only in the monitoring profile, got {prometheus.get('profiles')}"
    )
    assert str(prometheus["image"]).startswith("prom/prometheus:v"), f"image {prometheus['image']!r}"
    mounts = {str(volume).split(":")[0]: str(volume).split(":")[1] for volume in prometheus["volumes"]}
    assert mounts.get("./deploy/prometheus/alerts.yml") == "/etc/prometheus/alerts.yml", mounts
    assert mounts.get("./deploy/prometheus/prometheus.yml") == "/etc/prometheus/prometheus.yml", mounts
    assert all(str(port).startswith("127.0.0.1:") for port in prometheus.get("ports", [])), prometheus[
        "ports"
    ]
    others = [name for name, service in compose["services"].items() if name != "prometheus"]
    assert all("profiles" not in compose["services"][name] for name in others), (
        "the programs run in every profile"
    )


def test_prometheus_reaches_live_server_by_an_allowed_host() -> None:
    compose: dict[str, Any] = _with_defaults(load_yaml(COMPOSE_FILE))
    live = compose["services"]["live_server"]
    names = {"live_server", *((live.get("networks") or {}).get("default") or {}).get("aliases", [])}
    allowed = set(load_yaml(LIVE_SERVER_COMPOSE_CONFIG).get("allowed_hosts") or [])
    for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
        if job["job_name"] != "live_server":
            continue
        for target in (t for config in job["static_configs"] for t in config["targets"]):
            host = target.rpartition(":")[0]
            assert host in names, (
                f"live_server target {target}: {host} is not a name of the service ({names})"
            )
            assert host in allowed, f"live_server target {target}: {host} is not in allowed_hosts {allowed}"
