"""The suite's command-line options (one group, `conformance`) and the values derived from them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

QUICK_LOAD_S = 20.0  # the §6.3 load test in the default run
FULL_LOAD_S = 300.0  # ... and under -m perf: the spec's 5 minutes


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "exchange gRPC conformance suite")
    group.addoption(
        "--sut",
        metavar="PATH",
        type=existing_file("--sut"),
        default=None,
        help="system-under-test manifest (TOML); default: the reference implementation's",
    )
    group.addoption(
        "--scenario",
        metavar="SELECTOR",
        action="append",
        default=[],
        help="run only the scenarios of a spec section (e.g. 4.2) or one scenario ID (e.g. 4.2.1.b); repeatable",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        type=Path,
        default=Path("reports"),
        help="where the conformance report and measured figures are written (default: reports/)",
    )
    group.addoption(
        "--list-scenarios",
        metavar="PATH",
        type=Path,
        default=None,
        help="write every collected test's scenario IDs and markers as JSON to PATH",
    )
    group.addoption(
        "--grpc-trace",
        action="store_true",
        default=False,
        help="record the gRPC calls of each test; for a failing test write them to <report-dir>/traces/",
    )
    group.addoption(
        "--load-duration",
        metavar="SECONDS",
        type=positive_float("--load-duration"),
        default=None,
        help="duration of the §6.3 load test, which runs with -m perf (default: 300 s)",
    )
    group.addoption(
        "--compare",
        metavar="PREVIOUS.json",
        type=existing_file("--compare"),
        default=None,
        help="list scenarios whose status changed and figures that moved beyond their tolerance since an "
        "earlier conformance-report.json (also <report-dir>/comparison.{json,md}); exit status 1 when a "
        "scenario that passed there does not pass now",
    )
    group.addoption(
        "--rerun-failed",
        metavar="REPORT.json",
        type=existing_file("--rerun-failed"),
        default=None,
        help="run only the scenarios that did not pass in that conformance report (failed, error, stale, "
        "inconclusive, hung): exactly those IDs",
    )
    group.addoption(
        "--attach",
        nargs="?",
        const="exchange_connector",
        default=None,
        choices=("exchange_connector", "client_driver"),
        metavar="PROGRAM",
        help="run against a program you start yourself (e.g. under a debugger): exchange_connector (the "
        "default) or client_driver. For a connector the suite prints its upstream, ports, TLS files and "
        "token file, waits for it to serve, then runs the scenarios; those that must start, signal or "
        "restart it are not applicable. For a client driver it prints, for each driver a scenario needs, "
        "the command line with two named pipes as its stdin and stdout, and waits for it to be ready",
    )
    group.addoption(
        "--attach-port",
        metavar="PORT",
        type=int,
        default=None,
        help="with --attach: the gRPC port the attached connector listens on (default: one chosen and printed)",
    )
    group.addoption(
        "--attach-timeout",
        metavar="SECONDS",
        type=positive_float("--attach-timeout"),
        default=600.0,
        help="with --attach: how long to wait for the attached program to serve or be ready (default: 600 s)",
    )
    group.addoption(
        "--time-budget",
        metavar="SECONDS",
        type=positive_float("--time-budget"),
        default=None,
        help="every scenario's time budget, past which it is HUNG (default: its catalogue budget_s, else "
        "by level)",
    )
    group.addoption(
        "--list",
        dest="list_catalogue",
        action="store_true",
        default=False,
        help="list the selected scenarios (ID, title, level, rules, needed capabilities) and exit",
    )
    group.addoption(
        "--explain",
        metavar="ID",
        default=None,
        help="explain one scenario (its rules' text, what it does, what it measures) and exit",
    )
    group.addoption(
        "--soak-duration",
        metavar="DURATION",
        default=os.environ.get("SOAK_DURATION", "24h"),
        help="duration of the §7.1 soak test, e.g. 10m, 2h (default: $SOAK_DURATION or 24h)",
    )
    group.addoption(
        "--soak-speedup",
        metavar="N",
        type=positive_float("--soak-speedup"),
        default=None,
        help="run the soak's events N times as often, so a run of D carries D x N of events "
        "(default: $SOAK_SPEEDUP or 1)",
    )


def existing_file(flag: str) -> Callable[[str], Path]:
    def parse(value: str) -> Path:
        path = Path(value)
        if not path.is_file():
            raise pytest.UsageError(f"{flag}: no such file: {value}")
        return path

    return parse


def positive_float(flag: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise pytest.UsageError(f"{flag}: {value!r} is not a number") from None
        if number <= 0:
            raise pytest.UsageError(f"{flag}: must be positive, got {value}")
        return number

    return parse


def explicit_markexpr(config: pytest.Config) -> str:
    return str(config.getoption("markexpr") or "")


def perf_mode(config: pytest.Config) -> str:
    """'full' when the run asked for perf explicitly (-m perf), 'quick' otherwise."""
    return "full" if "perf" in explicit_markexpr(config) else "quick"


def load_duration_s(config: pytest.Config) -> float:
    """The §6.3 load test's duration: --load-duration, else by perf mode."""
    chosen = config.getoption("load_duration")
    if chosen is not None:
        return float(chosen)
    return FULL_LOAD_S if perf_mode(config) == "full" else QUICK_LOAD_S


def soak_speedup(config: pytest.Config) -> float:
    """The soak's speed-up: --soak-speedup, else SOAK_SPEEDUP, else 1 (real time)."""
    chosen = config.getoption("soak_speedup")
    if chosen is not None:
        return float(chosen)
    value = os.environ.get("SOAK_SPEEDUP", "")
    return positive_float("SOAK_SPEEDUP")(value) if value.strip() else 1.0
