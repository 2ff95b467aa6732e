"""The harness's fixtures: the SUT, ports, measured figures, the mock exchange, TLS material, a leak
probe and the program launcher. Each one cleans up after `yield` even when the test failed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.markers import scenario_ids
from harness.options import load_duration_s, perf_mode
from harness.perf.durations import parse_duration
from harness.perf.probes import LeakProbe
from harness.ports import free_port as allocate_port
from harness.report.results import Metric
from harness.stash import LAUNCHER_KEY, MANIFEST_KEY, VERDICTS_KEY
from harness.sut.attach import Attached, AttachLauncher, attach_mode
from harness.sut.launch import ProgramLauncher
from harness.sut.manifest import Compose, Manifest
from harness.tls import TlsMaterial, make_tls_material
from harness.verdicts import Verdicts


@pytest.fixture(scope="session")
def sut(pytestconfig: pytest.Config) -> Manifest:
    """The system under test: the programs named by --sut (the reference by default)."""
    return pytestconfig.stash[MANIFEST_KEY]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A callable that returns a loopback port free right now and not handed to another test."""
    return allocate_port


class MetricRecorder:
    """Records measured figures; they reach the conformance report and the results file."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    def record(self, name: str, value: float, unit: str = "") -> None:
        metric = Metric(name, float(value), unit, scenario_ids(self._item), self._item.nodeid)
        self._item.user_properties.append(("metric", json.dumps(metric.__dict__)))
        print(f"[metric] {name} = {value:.4g} {unit}")


@pytest.fixture
def metrics(request: pytest.FixtureRequest) -> MetricRecorder:
    """Record a measured figure: metrics.record("get_account_p50_ms", 0.41, "ms")."""
    return MetricRecorder(request.node)


@pytest.fixture
def verdicts(request: pytest.FixtureRequest, sut: Manifest) -> Verdicts:
    """Judge each of the test's scenario IDs on its own: `with verdicts.check("6.1.1.a"): assert ...`."""
    judged = Verdicts(request.node, scenario_ids(request.node), sut.known_failures)
    request.node.stash[VERDICTS_KEY] = judged
    return judged


@pytest.fixture
def load_duration(pytestconfig: pytest.Config) -> float:
    return load_duration_s(pytestconfig)


@pytest.fixture
def run_mode(pytestconfig: pytest.Config) -> str:
    """'full' under -m perf, 'quick' in the default run."""
    return perf_mode(pytestconfig)


@pytest.fixture
def soak_duration(pytestconfig: pytest.Config) -> float:
    if os.environ.get("SOAK_TEST") != "1":
        pytest.skip("environment: set SOAK_TEST=1 to run the soak test")
    return parse_duration(str(pytestconfig.getoption("soak_duration")))


@pytest.fixture
def mock_exchange(request: pytest.FixtureRequest) -> Iterator[MockExchangeServer]:
    """A started MockExchangeServer on 127.0.0.1 (port 0); stopped after the test, which then fails
    if the mock recorded a protocol violation. With --attach: the run's one mock exchange, the
    attached connector's upstream, its data as at the start of each test."""
    if attach_mode(request.config):
        attached: Attached = request.getfixturevalue("attached")
        attached.mock.reset_data()
        yield attached.mock
        attached.mock.raise_violations()
        return
    server = MockExchangeServer()
    with server:
        yield server
    server.raise_violations()


@pytest.fixture(scope="module")
def compose_table(sut: Manifest) -> Compose:
    """The SUT's [compose] table (for a module that requires the `compose` capability), once its
    file is on this host; the test is skipped, as an environment limit, when it is not."""
    compose = sut.compose
    assert compose is not None, "the module requires the `compose` capability"
    if not compose.file.is_file():
        pytest.skip(f"environment: the SUT's compose file {compose.file} is not on this host")
    return compose


@pytest.fixture
def tls_material(tmp_path: Path) -> TlsMaterial:
    """A fresh CA, server and client certificates and an unrelated CA, as PEM files under tmp_path."""
    return make_tls_material(tmp_path / "tls")


@pytest.fixture
def leak_probe() -> LeakProbe:
    """A LeakProbe of this process: probe.start() for the baseline, probe.check(...) or
    await probe.check_async(...) to compare with it."""
    return LeakProbe()


@pytest.fixture
def launcher(sut: Manifest, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProgramLauncher]:
    """A ProgramLauncher for the SUT manifest. After the test every program it started gets SIGTERM;
    the test then fails for a program that had to be killed, exited non-zero, or died unnoticed.
    A failing test's report carries the last log lines of every program it started."""
    if attach_mode(
        request.config
    ):  # the connector is the user's: a scenario that starts it is not applicable
        programs: ProgramLauncher = AttachLauncher(sut, tmp_path / "programs", request.node)
    else:
        programs = ProgramLauncher(sut, tmp_path / "programs")
    request.node.stash[LAUNCHER_KEY] = programs
    try:
        yield programs
    finally:
        programs.stop_all()


def show_logs_on_failure(item: pytest.Item, programs: ProgramLauncher) -> None:
    """A failure of `item` shows the last log lines of the programs `programs` started (the launcher
    fixture does this for its own; a module that runs its programs once for many tests calls it)."""
    item.stash[LAUNCHER_KEY] = programs


__all__ = ["MetricRecorder", "show_logs_on_failure"]
