"""Fixtures of the connector under test (harness.sut.connector): the factory, for async and for
sync tests, and a mock exchange the test may freeze."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.attach import ATTACHED_KEY, Attached, attach_mode
from harness.sut.connector import ConnectorFactory
from harness.sut.launch import ProgramLauncher


@pytest_asyncio.fixture
async def connectors(
    mock_exchange: MockExchangeServer,
    launcher: ProgramLauncher,
    free_port: Callable[[], int],
    request: pytest.FixtureRequest,
) -> AsyncIterator[ConnectorFactory]:
    """await connectors.start(...): the SUT's connector in the form the test asks, fed by the mock
    exchange unless told otherwise; every one still running is stopped and checked after the test.
    With --attach, the connector the user started (harness.sut.attach)."""
    factory = make_factory(mock_exchange, launcher, free_port, request)
    try:
        yield factory
    finally:
        await factory.finish()


@pytest.fixture
def sync_connectors(
    mock_exchange: MockExchangeServer,
    launcher: ProgramLauncher,
    free_port: Callable[[], int],
    request: pytest.FixtureRequest,
) -> Iterator[ConnectorFactory]:
    """connectors for a test without an event loop: sync_connectors.start_sync(...)."""
    factory = make_factory(mock_exchange, launcher, free_port, request)
    try:
        yield factory
    finally:
        factory.finish_sync()


@pytest.fixture(scope="session")
def attached(pytestconfig: pytest.Config) -> Attached:
    """--attach: the connector the user started, serving (harness.sut.attach)."""
    return pytestconfig.stash[ATTACHED_KEY]


def make_factory(
    mock: MockExchangeServer,
    launcher: ProgramLauncher,
    free_port: Callable[[], int],
    request: pytest.FixtureRequest,
) -> ConnectorFactory:
    if not attach_mode(request.config):
        return ConnectorFactory(launcher, free_port, mock)
    attached: Attached = request.getfixturevalue("attached")
    return ConnectorFactory(launcher, free_port, mock, attached=attached, item=request.node)


@pytest.fixture
def freezable_mock() -> Iterator[MockExchangeServer]:
    """A started mock exchange whose freeze() stops it answering anything (as SIGSTOP would)."""
    server = MockExchangeServer(freezable=True)
    with server:
        yield server
    server.raise_violations()


__all__ = ["attached", "connectors", "freezable_mock", "sync_connectors"]
