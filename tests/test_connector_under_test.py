"""One connector under test: specs/ starts the SUT's connector only through harness.sut.connector,
reads metrics through harness.sut.prometheus and judges error lines by rule H4 (program_log)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.sut import prometheus
from harness.sut.program_log import error_lines, is_error_line

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
CONNECTOR = "exchange_connector"
LAUNCHER_CALLS = ("start", "start_async")

pytestmark = pytest.mark.timeout(30)


def connector_starts(source: str) -> list[int]:
    """Lines of `source` that call .start(...) or .start_async(...) with "exchange_connector"."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LAUNCHER_CALLS
            and any(
                isinstance(arg, ast.Constant) and arg.value == CONNECTOR
                for arg in [*node.args, *(keyword.value for keyword in node.keywords)]
            )
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_connector_starts_are_found() -> None:
    source = (
        'program = await launcher.start_async("exchange_connector", values)\n'
        'other = launcher.start(name="exchange_connector")\n'
        'fine = launcher.start("market_maker", values)\n'
        "also_fine = await connectors.start(tls=tls)\n"
    )
    assert connector_starts(source) == [1, 2]


def test_specs_start_the_connector_only_through_the_factory() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(SPECS.rglob("*.py"))
        for line in connector_starts(path.read_text(encoding="utf-8"))
    ]
    assert not found, (
        "these start the SUT's exchange_connector through the launcher; use the connectors fixture "
        f"(harness/sut/connector.py) instead: {found}"
    )


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"event": "upstream_lost", "level": "error"}', True),
        ('{"event": "x", "level": "CRITICAL"}', True),
        ('{"event": "x", "severity": "fatal"}', True),
        ('{"event": "x", "level": "warning"}', False),
        ('{"event": "x", "level": "info", "message": "ERROR in the words only"}', False),
        ("Traceback (most recent call last):", True),
        ('{"event": "x", "level": "warning", "exc": "Traceback (most recent call last): ..."}', True),
        ("E1126 13:16:03.123456  123 chttp2_transport.cc:1] something failed", True),
        ("I1126 13:16:03.123456  123 chttp2_transport.cc:1] information", False),
        ("plain words", False),
    ],
)
def test_error_lines_follow_rule_h4(line: str, error: bool) -> None:
    assert is_error_line(line) is error
    assert error_lines([line, "plain"]) == ([line] if error else [])


METRICS_TEXT = """\
# HELP exchange_connector_subscribers Subscribers now.
# TYPE exchange_connector_subscribers gauge
exchange_connector_subscribers{topic="account"} 3.0
exchange_connector_subscribers{topic="positions"} 1.0
# HELP exchange_connector_calls_refused_total Refused calls.
# TYPE exchange_connector_calls_refused_total counter
exchange_connector_calls_refused_total{reason="overloaded"} 5.0
exchange_connector_calls_refused_total{reason="shutting_down"} 2.0
"""


def test_metrics_are_read_by_name_and_labels() -> None:
    assert (
        prometheus.sample_value(METRICS_TEXT, "exchange_connector_subscribers", {"topic": "account"}) == 3.0
    )
    assert prometheus.sample_value(METRICS_TEXT, "exchange_connector_subscribers", {"topic": "x"}) is None
    assert prometheus.sample_value(METRICS_TEXT, "exchange_connector_missing") is None
    assert prometheus.sample_total(METRICS_TEXT, "exchange_connector_calls_refused_total") == 7.0
