"""The harness's fixtures: the mock exchange, TLS material, a leak probe, the program launcher.

Each one cleans up after `yield` even when the test failed. When a test using the launcher fails,
the last log lines of every program it started are attached to the failure report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.probes import LeakProbe
from harness.sut.launch import ProgramLauncher
from harness.sut.manifest import Manifest
from harness.tls import TlsMaterial, make_tls_material

LAUNCHER_KEY = pytest.StashKey[ProgramLauncher]()
LOG_TAIL_LINES = 30


@pytest.fixture
def mock_exchange() -> Iterator[MockExchangeServer]:
    """A started MockExchangeServer on 127.0.0.1 (port 0); stopped after the test, which then fails
    if the mock recorded a protocol violation."""
    server = MockExchangeServer()
    with server:
        yield server
    server.raise_violations()


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
    the test then fails for a program that had to be killed, exited non-zero, or died unnoticed."""
    programs = ProgramLauncher(sut, tmp_path / "programs")
    request.node.stash[LAUNCHER_KEY] = programs
    try:
        yield programs
    finally:
        programs.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    programs = item.stash.get(LAUNCHER_KEY, None)
    if programs is not None and programs.programs and report.failed and report.when == "call":
        # the programs are still running: their logs show what they saw up to the failure
        report.sections.append(("program logs", programs.log_tails(LOG_TAIL_LINES)))
    return report
