"""Fixtures of the perf and soak levels (imported by specs/perf/conftest.py and specs/soak/conftest.py).

* ``perf``: records a figure to the run's metrics and to reports/perf-results.json.
* ``baseline_program``: the bare baseline (harness.baseline) as a separate program, one per session
  (per xdist worker), stateless between tests.
* ``connector``: the SUT's exchange_connector, started by the harness launcher with the harness
  mock exchange as its upstream; stopped (SIGTERM, clean exit checked) by the launcher's teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.baseline import BaselineProcess
from harness.perfresults import RESULTS_FILE, PerfRecorder
from harness.plugin import scenario_ids


@pytest.fixture
def perf(request: pytest.FixtureRequest, metrics: Any, pytestconfig: pytest.Config) -> Iterator[PerfRecorder]:
    """perf.record("get_account_p50_ms", 0.6, "ms"): to the report and to reports/perf-results.json."""
    node = request.node
    if node.get_closest_marker("soak") is not None:
        mode = "soak"
    else:
        mode = "full" if "perf" in str(pytestconfig.getoption("markexpr") or "") else "quick"
    path = Path(pytestconfig.getoption("report_dir")) / RESULTS_FILE
    recorder = PerfRecorder(metrics, path, test=node.nodeid, scenario_ids=scenario_ids(node), mode=mode)
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


@pytest.fixture
def connector(launcher: Any, mock_exchange: Any, free_port: Any) -> Any:
    """The exchange_connector under test, upstream = the mock exchange; a RunningProgram."""
    values = {"upstream": mock_exchange.address, "grpc_port": free_port(), "metrics_port": free_port()}
    return launcher.start("exchange_connector", values)
