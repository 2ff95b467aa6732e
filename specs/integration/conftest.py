"""The connector under test for the §4.2 ExchangeServer scenarios: the SUT's exchange_connector,
started by the harness launcher as a program, with the harness's mock exchange as its upstream, so
a test triggers updates there.

The connector tells the test what only it knows through its Prometheus endpoint
(exchange_connector_subscribers{topic}, exchange_connector_subscribers_dropped_total{topic}: see
docs/sut-manifest.md), what it logged (its JSON log lines) and its resources (its pid).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.probes import ResourceSnapshot
from harness.sut.launch import ProgramLauncher, RunningProgram
from harness.tls import TlsMaterial
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

TOKEN = "conformance-token-4.2"
METRIC_PREFIX = "exchange_connector_"
STARTUP_SUBSCRIPTIONS_S = 10.0  # rule C3: both upstream subscriptions open once the connector is ready
Event = dict[str, Any]


@dataclass
class ConnectorUnderTest:
    """A started connector and what the test may ask of it."""

    address: str
    mock: MockExchangeServer
    program: RunningProgram
    metrics_port: int
    tls: TlsMaterial | None = None
    token: str | None = None
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    # -------------------------------------------------------------- clients

    def channel(
        self, *, plaintext: bool = False, options: list[tuple[str, Any]] | None = None
    ) -> grpc.aio.Channel:
        """A channel to the connector (TLS when it serves TLS, unless `plaintext`); closed at teardown."""
        if self.tls is not None and not plaintext:
            channel = grpc.aio.secure_channel(self.address, self.tls.channel_credentials(), options=options)
        else:
            channel = grpc.aio.insecure_channel(self.address, options=options)
        self._channels.append(channel)
        return channel

    def stub(self, channel: grpc.aio.Channel | None = None) -> pb_grpc.ExchangeServiceAsyncStub:
        return pb_grpc.ExchangeServiceStub(channel or self.channel())  # type: ignore[return-value]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The authorization header when the connector requires a token."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    async def close_channels(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()

    # -------------------------------------------------------------- what the server knows

    async def subscribers(self, topic: str) -> int:
        return int(await self._metric("subscribers", topic))

    async def dropped(self, topic: str) -> int:
        return int(await self._metric("subscribers_dropped_total", topic))

    async def wait_subscribers(self, topic: str, count: int, scenario: str, timeout: float = 10.0) -> None:
        """Until the server holds exactly `count` subscribers of `topic`."""
        deadline = time.monotonic() + timeout
        while (held := await self.subscribers(topic)) != count:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"under rule C15, expected the connector's subscriber gauge to show {count} "
                    f"{topic} subscriber(s) within {timeout:.0f} s, got {held}"
                )
            await asyncio.sleep(0.02)

    def events(self, name: str) -> list[Event]:
        """The log events called `name` so far (the manifest's [events] table maps the names)."""
        return self.program.events(name)

    def log_records(self) -> list[Event]:
        return [r for line in self.program.log_lines() if (r := _json(line)) is not None]

    def snapshot(self) -> ResourceSnapshot:
        """The connector program's resources now."""
        return ResourceSnapshot.take(self.program.pid)

    async def _metric(self, name: str, topic: str) -> float:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5.0)
        response.raise_for_status()
        wanted = METRIC_PREFIX + name
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == wanted and sample.labels.get("topic") == topic:
                    return float(sample.value)
        raise AssertionError(f"the connector's /metrics has no {wanted}{{topic={topic!r}}}")


def _json(line: str) -> Event | None:
    import json

    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


StartConnector = Callable[..., Awaitable[ConnectorUnderTest]]


@pytest_asyncio.fixture
async def start_connector(
    mock_exchange: MockExchangeServer,
    launcher: ProgramLauncher,
    free_port: Any,
) -> AsyncIterator[StartConnector]:
    """start_connector(tls=TlsMaterial|None, token=str|None): a started connector (serving, with both
    upstream subscriptions open at the mock exchange); stopped at teardown."""
    started: list[ConnectorUnderTest] = []

    async def start(*, tls: TlsMaterial | None = None, token: str | None = None) -> ConnectorUnderTest:
        values: dict[str, Any] = {
            "upstream": mock_exchange.address,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
        }
        if tls is not None:
            values.update(tls.launch_values())
        if token is not None:
            values["token"] = token
        program = await launcher.start_async(
            "exchange_connector", values, tls=tls is not None, token=token is not None
        )
        target = ConnectorUnderTest(
            program.address, mock_exchange, program, values["metrics_port"], tls, token
        )
        started.append(target)
        # rule C3: both upstream subscriptions are open once the connector is ready, so an update
        # triggered from now on reaches it
        for topic in ("account", "positions"):
            try:
                await mock_exchange.wait_for_subscriptions_async(topic, 1, timeout=STARTUP_SUBSCRIPTIONS_S)
            except TimeoutError as error:
                pytest.fail(
                    f"under rule C3, expected the connector to open its upstream {topic!r} subscription when it "
                    f"starts, before any client subscribes: {error}"
                )
        return target

    try:
        yield start
    finally:
        exit_codes = []
        for target in started:
            await target.close_channels()
            if target.program.running:
                exit_codes.append(await asyncio.to_thread(target.program.stop))
        assert all(code == 0 for code in exit_codes), (
            f"under rule C10, expected the connector program to exit 0 on SIGTERM, got exit code(s) {exit_codes}"
        )
        if started:
            await _upstream_closed(mock_exchange)


async def _upstream_closed(mock: MockExchangeServer, timeout: float = 5.0) -> None:
    """A stopped connector leaves no subscription open at its exchange (checked before the mock stops,
    which then never races a subscription still being torn down)."""
    deadline = time.monotonic() + timeout
    while (still := {t: mock.subscriptions(t) for t in ("account", "positions")}) != {
        "account": 0,
        "positions": 0,
    }:
        if time.monotonic() > deadline:
            pytest.fail(
                f"expected the stopped connector to close its upstream subscriptions, still open: {still}"
            )
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def connector(start_connector: StartConnector) -> ConnectorUnderTest:
    """A started connector (plaintext, no token) in the form of this test's parameter."""
    return await start_connector()


__all__ = ["TOKEN", "ConnectorUnderTest", "StartConnector"]


async def read_stream(
    call: Any, count: int, scenario: str, *, noun: str = "messages", timeout: float = 15.0
) -> list[Any]:
    """The next `count` messages of a stream; fails naming the scenario when they do not come."""
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
    pytest.fail(f"expected {count} {noun} within {timeout} s, got {len(messages)}")
