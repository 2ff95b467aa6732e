"""The connector program in front of a mock exchange the test may freeze: what the §4.2 freshness,
hung-upstream and back-pressure scenarios share.

Only the SUT manifest and documented protocols are used: the program is started by the launcher,
read through gRPC (health, the contract, initial metadata) and its Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.launch import ProgramLauncher, RunningProgram
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

DATA_AGE_KEY = "x-opensqt-data-age-ms"  # rule C32
METRIC_PREFIX = "exchange_connector_"
SERVING = health_pb2.HealthCheckResponse.SERVING
DRAIN_STALL_S = 3.0  # a reading client's updates still in flight once the exchange stops


@dataclass
class Connector:
    """A started connector program, its freezable upstream, and the questions a test asks."""

    program: RunningProgram
    mock: MockExchangeServer
    metrics_port: int
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.program.address

    def channel(self, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.address, options=options)
        self._channels.append(channel)
        return channel

    def stub(self, channel: grpc.aio.Channel | None = None) -> pb_grpc.ExchangeServiceAsyncStub:
        return pb_grpc.ExchangeServiceStub(channel or self.channel())

    async def health(self, timeout: float = 2.0) -> str:
        """The health status name, or the error's code name when the check itself fails."""
        stub = health_pb2_grpc.HealthStub(self.channel())
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return f"error {exc.code().name}"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def wait_health(self, wanted: str, within: float) -> float | None:
        """Seconds until health reads `wanted` (None if it did not within `within` s)."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if await self.health() == wanted:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        return None

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample of the program's /metrics (None when it has none by that name and labels)."""
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5.0)
        response.raise_for_status()
        wanted = METRIC_PREFIX + name
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == wanted and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    return float(sample.value)
        return None

    async def wait_metric(self, name: str, labels: dict[str, str], at_least: float, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.metric(name, labels)
            if value is not None and value >= at_least:
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()


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


@pytest.fixture(name="freezable_mock")
def freezable_mock_fixture() -> Iterator[MockExchangeServer]:
    """A started mock exchange whose freeze() stops it answering anything (as SIGSTOP would)."""
    server = MockExchangeServer(freezable=True)
    with server:
        yield server
    server.raise_violations()


@pytest_asyncio.fixture(name="program_connector")
async def program_connector_fixture(
    freezable_mock: MockExchangeServer, launcher: ProgramLauncher, free_port: Any
) -> AsyncIterator[Connector]:
    """The SUT's connector program, upstream the freezable mock, both upstream streams open."""
    values = {"upstream": freezable_mock.address, "grpc_port": free_port(), "metrics_port": free_port()}
    program = await launcher.start_async("exchange_connector", values)
    target = Connector(program, freezable_mock, values["metrics_port"])
    try:
        await freezable_mock.wait_for_subscriptions_async("account", 1, timeout=10.0)
        await freezable_mock.wait_for_subscriptions_async("positions", 1, timeout=10.0)
        yield target
    finally:
        freezable_mock.thaw()
        await target.close()


@pytest_asyncio.fixture(name="direct_connector")
async def direct_connector_fixture(
    mock_exchange: MockExchangeServer, launcher: ProgramLauncher, free_port: Any
) -> AsyncIterator[Connector]:
    """The SUT's connector program, straight on the mock exchange (no freezable relay between them:
    one hop fewer in the harness's own process), its account stream open. Accounts are stamped as
    the exchange writes them, so an age is the connector's and the transport's, not the harness's
    hand-off from the triggering loop."""
    values = {"upstream": mock_exchange.address, "grpc_port": free_port(), "metrics_port": free_port()}
    program = await launcher.start_async("exchange_connector", values)
    target = Connector(program, mock_exchange, values["metrics_port"])
    try:
        await mock_exchange.wait_for_subscriptions_async("account", 1, timeout=10.0)
        mock_exchange.stamp_on_send()
        yield target
    finally:
        await target.close()


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
