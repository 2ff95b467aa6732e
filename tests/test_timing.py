"""Timing-bounded scenarios (harness.timing, harness.host_watch): a bound missed on a steady host
FAILS, one missed while the host stalled is retried and ends INCONCLUSIVE, and a failure a host
cannot cause FAILS at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from harness import catalogue as catalogue_module
from harness import timing
from harness.host_watch import HostFigures, HostWatch
from harness.outcomes import EXIT_INCONCLUSIVE

pytest_plugins = ["pytester"]

STEADY = HostFigures(1.0, 2.0, 1.0, 0.05, 0.0, 0.5)
STALLED = HostFigures(1.0, 400.0, 250.0, 1.0, 0.0, 3.0)

TESTS = """
import pytest
from harness.outcomes import TimingMiss, within

COUNT = {"n": 0}

@pytest.mark.integration
@pytest.mark.scenario("4.2.1.x27")
def test_age():
    COUNT["n"] += 1
    print(f"attempt {COUNT['n']}")
    within(MEASURED(COUNT["n"]), 2.0, f"expected no update older than 2 s, got {MEASURED(COUNT['n']):.2f} s")

@pytest.mark.integration
@pytest.mark.scenario("4.2.1.x23")
def test_lost():
    assert False, "update 3 was lost"
"""


class FakeWatch:
    """A HostWatch whose figures the test chooses, one per attempt."""

    plan: list[HostFigures] = []

    def __init__(self) -> None:
        self.figures: HostFigures | None = None

    def __enter__(self) -> FakeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.figures = FakeWatch.plan.pop(0) if len(FakeWatch.plan) > 1 else FakeWatch.plan[0]


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:asyncio -p no:cacheprovider\n")
    loaded = catalogue_module.load()
    timed = tuple(
        replace(s, timing=s.id in ("4.2.1.x27", "4.2.1.x23")) if s.kind == "scenario" else s
        for s in loaded.scenarios
    )
    monkeypatch.setattr(catalogue_module, "load", lambda *a: catalogue_module.Catalogue(loaded.spec, timed))
    monkeypatch.setattr(timing, "HostWatch", FakeWatch)
    return pytester


def _run(suite: pytest.Pytester, measured: str, hosts: list[HostFigures]) -> tuple[Any, dict[str, Any]]:
    FakeWatch.plan = list(hosts)
    suite.makepyfile(test_timed=TESTS.replace("MEASURED", measured))
    result = suite.runpytest("--report-dir", "out", "-s", "test_timed.py")
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    return result, {row["id"]: row for row in report["scenarios"]} | {"tests": report["tests"]}


def _attempts(result: Any) -> int:
    return sum(
        1 for line in result.stdout.lines if re.match(r"(test_timed.py )?attempt \d", line.strip(". "))
    )


def test_a_miss_on_a_steady_host_fails_at_once(suite: pytest.Pytester) -> None:
    result, rows = _run(suite, "(lambda n: 2.3)", [STEADY])
    assert rows["4.2.1.x27"]["status"] == "failed"
    assert "got 2.30 s" in rows["4.2.1.x27"]["reason"]
    assert _attempts(result) == 1
    assert result.ret == 1


def test_a_miss_on_a_stalled_host_is_retried_then_inconclusive(suite: pytest.Pytester) -> None:
    result, rows = _run(suite, "(lambda n: 2.3)", [STALLED])
    assert rows["4.2.1.x27"]["status"] == "inconclusive", rows["4.2.1.x27"]
    assert "rerun on a quieter machine" in rows["4.2.1.x27"]["reason"]
    assert "other processes took 1.00 cores" in rows["4.2.1.x27"]["reason"]
    figures = next(t["figures"] for t in rows["tests"] if t["scenario_ids"] == ["4.2.1.x27"])
    assert [a["attempt"] for a in figures["host"]] == [1, 2, 3]
    assert _attempts(result) == timing.MAX_ATTEMPTS
    # a failure a host cannot cause stays a failure, on the same stalled host, after one attempt
    assert rows["4.2.1.x23"]["status"] == "failed"
    assert result.ret == 1


def test_an_attempt_that_passes_passes(suite: pytest.Pytester) -> None:
    _, rows = _run(suite, "(lambda n: 2.3 if n == 1 else 1.0)", [STALLED, STEADY])
    assert rows["4.2.1.x27"]["status"] == "passed"
    figures = next(t["figures"] for t in rows["tests"] if t["scenario_ids"] == ["4.2.1.x27"])
    assert [a["timing_miss"] for a in figures["host"]] == [True, False]


def test_only_inconclusive_gives_its_own_exit_status(suite: pytest.Pytester) -> None:
    FakeWatch.plan = [STALLED]
    suite.makepyfile(
        test_timed=TESTS.replace("MEASURED", "(lambda n: 2.3)").split(
            '@pytest.mark.integration\n@pytest.mark.scenario("4.2.1.x23")'
        )[0]
    )
    result = suite.runpytest("--report-dir", "out", "test_timed.py")
    assert result.ret == EXIT_INCONCLUSIVE
    assert "1 inconclusive" in result.stdout.lines[-1]


@pytest.fixture
def busy_neighbour() -> Iterator[int]:
    """A `yes > /dev/null` that is not this process's child (as a neighbour on the host would be)."""
    started = subprocess.run(
        ["sh", "-c", "yes > /dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True, timeout=5
    )
    pid = int(started.stdout.strip())
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.exclusive  # the fault matrix's runs are the session's children: the watch counts them as its own
@pytest.mark.timeout(30)
def test_the_watch_sees_a_busy_neighbour(busy_neighbour: int) -> None:
    with HostWatch() as watch:
        time.sleep(1.0)
    assert watch.figures is not None
    assert watch.figures.foreign_cpu_cores > 0.5, watch.figures
    assert not watch.figures.steady()
    assert any("other processes took" in why for why in watch.figures.unsteady_because())


@pytest.mark.timeout(30)
def test_the_watch_counts_the_tests_own_work_as_its_own() -> None:
    # a fixed amount of CPU work in a child, so the figure does not depend on what else runs
    work = [sys.executable, "-c", "sum(i * i for i in range(12_000_000))"]  # about 0.6 s of a core
    with HostWatch() as watch:
        subprocess.run(work, check=True, timeout=20)
    assert watch.figures is not None
    assert watch.figures.own_cpu_s >= 0.2, watch.figures


def test_a_measurement_the_harness_could_not_make_is_tried_again(suite: pytest.Pytester) -> None:
    FakeWatch.plan = [STEADY]
    suite.makepyfile(
        test_capacity="""
        import pytest
        from harness.outcomes import Inconclusive

        COUNT = {"n": 0}

        @pytest.mark.integration
        @pytest.mark.scenario("4.2.1.x27")
        def test_readers():
            COUNT["n"] += 1
            if COUNT["n"] < 3:
                raise Inconclusive("the probe reader fell behind", {"reader_late_s": 0.9})
        """
    )
    suite.runpytest("--report-dir", "out", "test_capacity.py")
    report = json.loads((suite.path / "out" / "conformance-report.json").read_text())
    row = next(r for r in report["scenarios"] if r["id"] == "4.2.1.x27")
    assert row["status"] == "passed", row
    host = next(t["figures"]["host"] for t in report["tests"] if t["scenario_ids"] == ["4.2.1.x27"])
    assert len(host) == 3
