"""Fixtures of the perf and soak levels (a plugin module loaded by harness.plugin).

* ``perf``: records a figure to the run's metrics and to reports/perf-results.json. It also holds
  the machine-wide benchmark lock while the test runs, so two benchmarks of this suite (xdist
  workers, or two runs at once) never measure each other; after BENCH_LOCK_WAIT_S the test runs
  anyway and its details say it was not alone (``"exclusive": false``). A soak test does not take
  the lock (hours of it would stall every benchmark).
* ``baseline_program``: the bare baseline (harness.doubles.baseline) as a separate program, one per session
  (per xdist worker), stateless between tests.
* ``relay_baseline``: the bare relay (harness.doubles.relay) as a separate program reading its own
  mock exchange (so feeding one target never costs the other), one per test.
* ``connector``: the SUT's exchange_connector, started by the harness launcher with the harness
  mock exchange as its upstream; stopped (SIGTERM, clean exit checked) by the launcher's teardown.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.doubles.baseline import BaselineProcess
from harness.doubles.mock_exchange import MockExchangeServer
from harness.doubles.relay import RelayProcess
from harness.markers import scenario_ids
from harness.options import perf_mode
from harness.perf.results import RESULTS_FILE, PerfRecorder

BENCH_LOCK = Path(tempfile.gettempdir()) / "opensqt-bench.lock"
BENCH_LOCK_WAIT_S = 120.0


@contextlib.contextmanager
def bench_lock(path: Path = BENCH_LOCK, wait_s: float = BENCH_LOCK_WAIT_S) -> Iterator[bool]:
    """Hold the benchmark lock (True), or give up after `wait_s` seconds and go on without (False)."""
    with open(path, "a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
                continue
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


@pytest.fixture
def perf(request: pytest.FixtureRequest, metrics: Any, pytestconfig: pytest.Config) -> Iterator[PerfRecorder]:
    """perf.record("get_account_p50_ms", 0.6, "ms"): to the report and to reports/perf-results.json."""
    node = request.node
    if node.get_closest_marker("soak") is not None:
        mode = "soak"
    else:
        mode = perf_mode(pytestconfig)
    path = Path(pytestconfig.getoption("report_dir")) / RESULTS_FILE
    recorder = PerfRecorder(metrics, path, test=node.nodeid, scenario_ids=scenario_ids(node), mode=mode)
    # A soak runs for hours and measures drift, not speed: it never holds the benchmark lock
    lock = contextlib.nullcontext(False) if mode == "soak" else bench_lock()
    with lock as exclusive:
        recorder.detail("exclusive", exclusive)
        try:
            yield recorder
        finally:
            recorder.flush()  # what was measured is kept even when an assertion failed


@pytest.fixture(scope="session")
def baseline_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaselineProcess]:
    """The bare grpcio baseline program; BENCH_BASELINE_LOOP=asyncio|uvloop chooses its loop."""
    log = tmp_path_factory.mktemp("baseline") / "baseline.log"
    with BaselineProcess(loop=os.environ.get("BENCH_BASELINE_LOOP", "auto"), log_path=log) as program:
        yield program


@dataclass
class RelayBaseline:
    """The relay program and the mock exchange it reads."""

    mock: MockExchangeServer
    program: RelayProcess

    @property
    def address(self) -> str:
        return self.program.address

    @property
    def pid(self) -> int:
        return self.program.pid


@pytest.fixture
def relay_baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayBaseline]:
    """The bare relay baseline, upstream = a mock exchange of its own."""
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    with MockExchangeServer() as mock:
        with RelayProcess(
            mock.address, loop=os.environ.get("BENCH_BASELINE_LOOP", "auto"), log_path=log
        ) as program:
            yield RelayBaseline(mock, program)


@pytest.fixture
def connector(mock_exchange: Any, launcher: Any, free_port: Any) -> Any:
    """The exchange_connector under test, upstream = the mock exchange; a RunningProgram.

    The mock exchange is set up before the launcher, so at teardown the connector stops first and
    the mock never ends streams under a connector that is still running."""
    values = {"upstream": mock_exchange.address, "grpc_port": free_port(), "metrics_port": free_port()}
    return launcher.start("exchange_connector", values)
