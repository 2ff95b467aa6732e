"""The connector under test, in two forms, for the §4.2 ExchangeServer scenarios.

One body, two drivers: every test taking `connector` (or `start_connector`) runs twice,
- "inprocess": the reference ExchangeServer over the `grpc` adapter (GrpcExchange), in the test's
  own event loop (white-box: the reference library only);
- "program": the SUT's exchange_connector, started by the harness launcher as a subprocess;
and in both the upstream is the harness's mock exchange, so the test triggers updates there.

The driver tells the test what only the server knows: how many subscribers it holds and how many
it dropped (hub counters in-process; for the program, its Prometheus endpoint:
exchange_connector_subscribers{topic} and exchange_connector_subscribers_dropped_total{topic}),
what it logged (captured records in-process; the program's JSON log lines), and its resources
(this process, or the program's pid).
"""

from __future__ import annotations

import asyncio
import logging
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
from implementation.exchange.remote_stream import ReconnectPolicy
from implementation.exchange.server import ExchangeServer
from implementation.exchange.tls import TlsServerConfig
from implementation.exchange.upstream import GrpcExchange
from implementation.logs import record_event, record_fields
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

FORMS = [pytest.param("inprocess", marks=pytest.mark.requires("reference_library")), "program"]
TOKEN = "conformance-token-4.2"
METRIC_PREFIX = "exchange_connector_"
Event = dict[str, Any]


class _Captured(logging.Handler):
    """Log records of the in-process connector, as the dicts a program's JSON lines parse to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Event] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = {"event": record_event(record), "level": record.levelname.lower(), "logger": record.name}
        if event["event"] == "log":
            event["message"] = record.getMessage()
        self.records.append({**record_fields(record), **event})


@dataclass
class ConnectorUnderTest:
    """A started connector and what the test may ask of it."""

    form: str
    address: str
    mock: MockExchangeServer
    tls: TlsMaterial | None = None
    token: str | None = None
    server: ExchangeServer | None = None  # in-process form
    program: RunningProgram | None = None  # program form
    metrics_port: int = 0
    captured: _Captured | None = None
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
        if self.server is not None:
            return self.server.hub.subscriber_count(topic)
        return int(await self._metric("subscribers", topic))

    async def dropped(self, topic: str) -> int:
        if self.server is not None:
            return self.server.hub.stats[topic].dropped
        return int(await self._metric("subscribers_dropped_total", topic))

    async def wait_subscribers(self, topic: str, count: int, scenario: str, timeout: float = 10.0) -> None:
        """Until the server holds exactly `count` subscribers of `topic`."""
        deadline = time.monotonic() + timeout
        while (held := await self.subscribers(topic)) != count:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{scenario}: expected the connector to hold {count} {topic} subscriber(s), got {held}"
                )
            await asyncio.sleep(0.02)

    def events(self, name: str) -> list[Event]:
        """The log events called `name` so far."""
        if self.program is not None:
            return self.program.events(name)
        assert self.captured is not None
        return [record for record in self.captured.records if record["event"] == name]

    def log_records(self) -> list[Event]:
        if self.program is not None:
            return [r for line in self.program.log_lines() if (r := _json(line)) is not None]
        assert self.captured is not None
        return list(self.captured.records)

    def snapshot(self) -> ResourceSnapshot:
        """The connector's resources now (this process with its tasks, or the program's pid)."""
        return ResourceSnapshot.take(self.program.pid if self.program is not None else None)

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


@pytest_asyncio.fixture(params=FORMS)
async def start_connector(
    request: pytest.FixtureRequest,
    mock_exchange: MockExchangeServer,
    launcher: ProgramLauncher,
    free_port: Any,
) -> AsyncIterator[StartConnector]:
    """start_connector(tls=TlsMaterial|None, token=str|None): a started connector (serving, with both
    upstream subscriptions open at the mock exchange); stopped at teardown."""
    form = str(request.param)
    started: list[ConnectorUnderTest] = []
    logger = logging.getLogger("implementation")
    previous_level = logger.level

    async def start(*, tls: TlsMaterial | None = None, token: str | None = None) -> ConnectorUnderTest:
        if form == "inprocess":
            captured = _Captured()
            logger.addHandler(captured)
            logger.setLevel(logging.DEBUG)
            server = ExchangeServer(
                GrpcExchange(mock_exchange.address),
                token=token,
                tls=TlsServerConfig(tls.cert_pem, tls.key_pem) if tls else None,
                grace_period=2.0,
                backoff=ReconnectPolicy(initial_backoff=0.05, max_backoff=0.5),
            )
            target = ConnectorUnderTest(form, "", mock_exchange, tls, token, server=server, captured=captured)
            started.append(target)
            await server.start("127.0.0.1:0")
            target.address = server.address
            await server.wait_serving(10.0)
        else:
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
                form,
                program.address,
                mock_exchange,
                tls,
                token,
                program=program,
                metrics_port=values["metrics_port"],
            )
            started.append(target)
        # both upstream subscriptions open: an update triggered from now on reaches the connector
        await mock_exchange.wait_for_subscriptions_async("account", 1, timeout=10.0)
        await mock_exchange.wait_for_subscriptions_async("positions", 1, timeout=10.0)
        return target

    try:
        yield start
    finally:
        exit_codes = []
        for target in started:
            await target.close_channels()
            if target.server is not None:
                await target.server.stop(1.0)
            if target.captured is not None:
                logger.removeHandler(target.captured)
            if target.program is not None and target.program.running:
                exit_codes.append(await asyncio.to_thread(target.program.stop))
        logger.setLevel(previous_level)
        assert all(code == 0 for code in exit_codes), (
            f"expected the connector program to exit 0 on SIGTERM, got exit code(s) {exit_codes}"
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


__all__ = ["FORMS", "TOKEN", "ConnectorUnderTest", "StartConnector"]


async def read_stream(
    call: Any, count: int, scenario: str, *, noun: str = "messages", timeout: float = 15.0
) -> list[Any]:
    """The next `count` messages of a stream; fails naming the scenario when they do not come."""
    messages: list[Any] = []

    async def collect() -> None:
        while len(messages) < count:
            message = await call.read()
            if message is grpc.aio.EOF:
                pytest.fail(f"{scenario}: expected {count} {noun}, the stream ended after {len(messages)}")
            messages.append(message)

    try:
        await asyncio.wait_for(collect(), timeout)
        return messages
    except asyncio.TimeoutError:
        pass  # fail outside the handler: the report's reason is then this message, not the timeout
    pytest.fail(f"{scenario}: expected {count} {noun} within {timeout} s, got {len(messages)}")
