"""Fixtures for the client-driver scenarios: a started driver of the SUT, and its report on failure.

After the test the driver gets end of input and must exit 0 within 5 s (rule D8); a test that
failed only kills it, and its report carries the driver's last events and stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from harness.markers import scenario_ids
from harness.sut.attached_driver import driver_attach_mode
from harness.sut.client_driver import DriverFailure, DriverSession, attach_driver, start_driver
from harness.sut.manifest import Manifest

_SESSIONS = pytest.StashKey[list[DriverSession]]()
_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def start_client_driver(
    sut: Manifest, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], DriverSession]]:
    """A callable that starts one more client driver of the SUT (ready, rule D1). Every driver it
    started is closed after the test (and must then exit 0, rule D8), or killed when the test failed."""
    sessions: list[DriverSession] = []
    request.node.stash[_SESSIONS] = sessions
    scenario = ", ".join(scenario_ids(request.node))

    def start() -> DriverSession:
        if not sut.has_program("client_driver"):
            pytest.fail(f"[{scenario}]: the SUT {sut.name!r} names no [programs.client_driver]")
        workdir = tmp_path / f"client_driver-{len(sessions) + 1}"
        if driver_attach_mode(request.config):
            timeout = float(request.config.getoption("attach_timeout"))
            say = _console(request.config)
            session = attach_driver(sut, workdir, scenario, len(sessions) + 1, timeout, say)
        else:
            session = start_driver(sut, workdir, scenario)
        sessions.append(session)
        return session

    try:
        yield start
    finally:
        failed = request.node.stash.get(_CALL_FAILED, True)
        problems = []
        for session in sessions:
            if failed:
                session.kill()
                continue
            try:
                session.close()
            except DriverFailure as failure:
                problems.append(str(failure))
        if problems:
            raise DriverFailure("\n".join(problems))


def _console(config: pytest.Config) -> Callable[[str], None]:
    """Print to the user's terminal from inside a test (past pytest's capture)."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    return say


@pytest.fixture
def client_driver(start_client_driver: Callable[[], DriverSession]) -> DriverSession:
    """The SUT's client driver, started and ready."""
    return start_client_driver()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
        sessions = item.stash.get(_SESSIONS, [])
        if report.failed and sessions:
            text = "\n".join(f"client driver {n}: {s.describe(20)}" for n, s in enumerate(sessions, 1))
            report.sections.append(("client driver", text))
    return report


__all__ = ["client_driver", "start_client_driver"]
