"""What the §4.2 freshness, hung-upstream, overload, stall and back-pressure scenarios share: the
connector under test (harness.sut.connector) on a mock exchange the test may freeze, or straight on
the mock exchange with its accounts stamped as it sends them, and their readers and writers.

Only the SUT manifest and documented protocols are used: the program is started by the launcher,
read through gRPC (health, the contract, initial metadata) and its Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest_asyncio
from grpc_health.v1 import health_pb2

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.connector import ConnectorFactory, ConnectorUnderTest
from harness.sut.connector_fixtures import freezable_mock as freezable_mock_fixture
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

DATA_AGE_KEY = "x-opensqt-data-age-ms"  # rule C32
SERVING = health_pb2.HealthCheckResponse.SERVING
DRAIN_STALL_S = 3.0  # a reading client's updates still in flight once the exchange stops
Connector = ConnectorUnderTest


@pytest_asyncio.fixture(name="program_connector")
async def program_connector_fixture(
    freezable_mock: MockExchangeServer, connectors: ConnectorFactory
) -> AsyncIterator[Connector]:
    """The SUT's connector program, upstream the freezable mock, both upstream streams open."""
    try:
        yield await connectors.start(upstream=freezable_mock)
    finally:
        freezable_mock.thaw()


@pytest_asyncio.fixture(name="direct_connector")
async def direct_connector_fixture(connectors: ConnectorFactory) -> Connector:
    """The SUT's connector program, straight on the mock exchange (no freezable relay between them:
    one hop fewer in the harness's own process), its account stream open. Accounts are stamped as
    the exchange writes them, so an age is the connector's and the transport's, not the harness's
    hand-off from the triggering loop."""
    target = await connectors.start(subscriptions=("account",))
    target.mock.stamp_on_send()
    return target


def data_age_ms(metadata: Any) -> int | None:
    """The value of x-opensqt-data-age-ms in initial metadata (None when absent or not a number)."""
    for key, value in metadata or ():
        if key == DATA_AGE_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return int(text) if text.isdigit() else None
    return None


async def get_account(stub: pb_grpc.ExchangeServiceAsyncStub, timeout: float = 3.0) -> tuple[Any, Any]:
    """(account or None, data age in ms or the AioRpcError) of one GetAccount."""
    call = stub.GetAccount(pb.GetAccountRequest(), timeout=timeout)
    try:
        account = await call
    except grpc.aio.AioRpcError as exc:
        return None, exc
    return account, data_age_ms(await call.initial_metadata())


def stamped_account(n: int) -> pb.Account:
    """The spec's account, number `n` in total_balance, stamped now."""
    from opensqt.exchange.testdata import spec_account

    account = spec_account()
    account.total_balance = f"{10000 + n}.00"
    account.updated_at.GetCurrentTime()
    return account


async def read_all(
    call: Any, into: list[pb.Account], progressed: asyncio.Event | None = None
) -> grpc.StatusCode:
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            into.append(cast(pb.Account, message))
            if progressed is not None:
                progressed.set()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def drained(got: list[pb.Account], sent: list[pb.Account], progressed: asyncio.Event) -> None:
    """Until `got` holds as many updates as were sent, or DRAIN_STALL_S pass with none arriving."""
    with contextlib.suppress(TimeoutError):
        while len(got) < len(sent):
            progressed.clear()
            await asyncio.wait_for(progressed.wait(), DRAIN_STALL_S)


async def trigger_updates(
    connector: Connector, rate: int, sent: list[pb.Account], stop: asyncio.Event
) -> None:
    """`rate` stamped account updates a second, in small batches, into `sent`, until `stop`."""
    started = time.monotonic()
    while not stop.is_set():
        while len(sent) < int((time.monotonic() - started) * rate):
            update = stamped_account(len(sent))
            connector.mock.trigger_account_update(update)
            sent.append(update)
        await asyncio.sleep(0.01)


__all__ = [
    "DATA_AGE_KEY",
    "Connector",
    "data_age_ms",
    "direct_connector_fixture",
    "drained",
    "freezable_mock_fixture",
    "get_account",
    "program_connector_fixture",
    "read_all",
    "stamped_account",
    "trigger_updates",
]
