"""The §4.2 ExchangeServer scenarios' shared pieces. The connector under test is the harness's
(harness.sut.connector, through its `connectors` fixture; `connector` here is the plain one): the
SUT's exchange_connector, started by the launcher, with the harness's mock exchange as its
upstream, so a test triggers updates there, and read through its Prometheus endpoint, its JSON log
and its pid.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
import pytest_asyncio

from harness.sut.connector import ConnectorFactory, ConnectorUnderTest
from specs.sequences import sequence_problem

# A §4.2 module's marks: every test reads the connector's subscriber gauge (rule C15), so the
# section needs `metrics`; a module adds its own timeout.
SERVER_TESTS = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.requires("metrics")]

__all__ = ["SERVER_TESTS", "ConnectorUnderTest", "read_stream"]


@pytest_asyncio.fixture
async def connector(connectors: ConnectorFactory) -> ConnectorUnderTest:
    """A started connector: plaintext, no token, on the mock exchange, both upstream subscriptions open."""
    return await connectors.start()


async def read_stream(
    call: Any,
    count: int,
    scenario: str,
    *,
    noun: str = "messages",
    timeout: float = 15.0,
    expected: Sequence[Any] | None = None,
) -> list[Any]:
    """The next `count` messages of a stream; fails saying how many came when they do not (and,
    given the `expected` messages, which were lost, duplicated, reordered or altered)."""
    messages: list[Any] = []

    async def collect() -> None:
        while len(messages) < count:
            message = await call.read()
            if message is grpc.aio.EOF:
                pytest.fail(f"expected {count} {noun}, the stream ended after {len(messages)}")
            messages.append(message)

    try:
        await asyncio.wait_for(collect(), timeout)
        return messages
    except asyncio.TimeoutError:
        pass  # fail outside the handler: the report's reason is then this message, not the timeout
    problem = sequence_problem(list(expected), messages) if expected is not None else None
    pytest.fail(
        f"expected {count} {noun} within {timeout} s, got {len(messages)}"
        + (f": {problem}" if problem else "")
    )
