"""The SUT's exchange_connector under test: the one way a scenario starts it.

ConnectorFactory starts the manifest's `exchange_connector` through the launcher, in the form the
scenario needs (plaintext, TLS, a token; fed by the mock exchange or by a freezable one; on a port
of the test's choosing; not waiting for readiness, for the lifecycle scenarios that watch it fail),
and by default waits until it holds both upstream subscriptions (rule C3). A ConnectorUnderTest
answers what the scenario asks of the program: gRPC channels and stubs (closed at teardown), its
health (Check and Watch), its metrics (rule C15), its log events and error lines (rule H4), its
pid and resources. At teardown every connector still running gets SIGTERM and must exit 0 (rule
C10), and must leave no upstream subscription open.

Only the SUT manifest and documented protocols are used (docs/sut-manifest.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.doubles.mock_exchange import MockExchangeServer
from harness.outcomes import NotApplicable, not_applicable
from harness.perf.probes import ResourceSnapshot
from harness.sut import prometheus
from harness.sut.attach import Attached, AttachedProgram
from harness.sut.launch import ProgramLauncher, RunningProgram
from harness.sut.program_log import Event, error_lines
from harness.tls import TlsMaterial
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

PROGRAM = "exchange_connector"
METRIC_PREFIX = "exchange_connector_"
TOPICS = ("account", "positions")
STARTUP_SUBSCRIPTIONS_S = 10.0  # rule C3: both upstream subscriptions open once the connector is ready
UPSTREAM_CLOSED_S = 5.0  # a stopped connector's upstream subscriptions are gone within this
HEALTH_TIMEOUT_S = 2.0


def health_name(status: int) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


async def read_to_end(call: Any, received: list[Any]) -> grpc.aio.AioRpcError | None:
    """Reads a server stream into `received` to its end: the error status that ended it, or None
    when it ended OK."""
    try:
        async for message in call:
            received.append(message)
    except grpc.aio.AioRpcError as error:
        return error
    return None


@dataclass
class ConnectorUnderTest:
    """A started connector program, its upstream, and the questions a test asks of it."""

    program: RunningProgram
    mock: MockExchangeServer
    metrics_port: int
    tls: TlsMaterial | None = None
    token: str | None = None
    # started for this test, so its counters count from 0; False for the connector the user
    # started (--attach), whose counters hold the whole run's
    fresh: bool = True
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.program.address

    # -------------------------------------------------------------- clients

    def channel(
        self, options: Sequence[tuple[str, Any]] | None = None, *, plaintext: bool = False
    ) -> grpc.aio.Channel:
        """A channel to the connector (TLS when it serves TLS, unless `plaintext`); closed at teardown."""
        if self.tls is not None and not plaintext:
            channel = grpc.aio.secure_channel(self.address, self.tls.channel_credentials(), options=options)
        else:
            channel = grpc.aio.insecure_channel(self.address, options=options)
        self._channels.append(channel)
        return channel

    def stub(self, channel: grpc.aio.Channel | None = None) -> pb_grpc.ExchangeServiceAsyncStub:
        return pb_grpc.ExchangeServiceStub(channel or self.channel())

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The authorization header when the connector requires a token."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    async def close(self) -> None:
        """Closes the channels the test opened through channel()."""
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()

    close_channels = close

    # -------------------------------------------------------------- health (rule C11)

    async def health(self, timeout: float = HEALTH_TIMEOUT_S) -> str:
        """The health status name (Check, service ""), or "error CODE" when the check itself fails."""
        stub = health_pb2_grpc.HealthStub(self.channel())
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return f"error {exc.code().name}"
        return health_name(answer.status)

    async def wait_health(self, wanted: str, within: float) -> float | None:
        """Seconds until health reads `wanted` (None if it did not within `within` s)."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if await self.health() == wanted:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        return None

    async def watch_health(self, channel: grpc.aio.Channel | None = None) -> AsyncIterator[str]:
        """The statuses health's Watch (service "") pushes, as names, until the stream ends."""
        stub = health_pb2_grpc.HealthStub(channel or self.channel())
        async for reply in stub.Watch(health_pb2.HealthCheckRequest(service="")):
            yield health_name(reply.status)

    # -------------------------------------------------------------- metrics (rule C15)

    async def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """A sample of the program's /metrics, `name` with or without the exchange_connector_
        prefix (None when it has none by that name and labels)."""
        wanted = name if name.startswith(METRIC_PREFIX) else METRIC_PREFIX + name
        return prometheus.sample_value(await prometheus.scrape(self.metrics_port), wanted, labels)

    async def wait_metric(self, name: str, labels: Mapping[str, str], at_least: float, within: float) -> bool:
        """True once the metric reads at least `at_least`; False after `within` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.metric(name, labels)
            if value is not None and value >= at_least:
                return True
            await asyncio.sleep(0.05)
        return False

    async def required_metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = await self.metric(name, labels)
        if value is None:
            shown = name if name.startswith(METRIC_PREFIX) else METRIC_PREFIX + name
            raise AssertionError(
                f"the connector's /metrics has no {shown}{dict(labels or {})} (docs/sut-manifest.md, metrics)"
            )
        return value

    async def subscribers(self, topic: str) -> int:
        return int(await self.required_metric("subscribers", {"topic": topic}))

    async def dropped(self, topic: str) -> int:
        return int(await self.required_metric("subscribers_dropped_total", {"topic": topic}))

    async def wait_subscribers(self, topic: str, count: int, what: str = "", timeout: float = 10.0) -> None:
        """Until the server holds exactly `count` subscribers of `topic` (its gauge, rule C15)."""
        deadline = time.monotonic() + timeout
        while (held := await self.subscribers(topic)) != count:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"expected the connector's subscriber gauge (rule C15) to show {count} {topic} "
                    f"subscriber(s) within {timeout:.0f} s{f' ({what})' if what else ''}, got {held}"
                )
            await asyncio.sleep(0.02)

    # -------------------------------------------------------------- its log and its process

    def events(self, name: str) -> list[Event]:
        """The log events called `name` so far (the manifest's [events] table maps the names)."""
        return self.program.events(name)

    def log_records(self) -> list[Event]:
        return self.program.log.records()

    def error_lines(self, since: int = 0) -> list[str]:
        """The error lines (rule H4) of its log from line `since` of log_lines() on."""
        return error_lines(self.program.log_lines()[since:])

    def snapshot(self) -> ResourceSnapshot:
        """The connector program's resources now."""
        return ResourceSnapshot.take(self.program.pid)

    def tail(self) -> str:
        return self.program.tail()


@dataclass
class ConnectorFactory:
    """Starts the SUT's connector for a scenario; stops and checks them all at teardown."""

    launcher: ProgramLauncher
    free_port: Callable[[], int]
    upstream: MockExchangeServer  # the default upstream: the test's mock exchange
    started: list[ConnectorUnderTest] = field(default_factory=list)
    attached: Attached | None = None  # --attach: the connector the user started (harness.sut.attach)
    item: pytest.Item | None = None  # the scenario, for what an attached connector cannot do

    def _values(
        self,
        upstream: MockExchangeServer,
        tls: TlsMaterial | None,
        token: str | None,
        grpc_port: int | None,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            "upstream": upstream.address,
            "grpc_port": grpc_port if grpc_port is not None else self.free_port(),
            "metrics_port": self.free_port(),
        }
        if tls is not None:
            values.update(tls.launch_values())
        if token is not None:
            values["token"] = token
        return values

    def start_sync(
        self,
        *,
        upstream: MockExchangeServer | None = None,
        tls: TlsMaterial | None = None,
        token: str | None = None,
        grpc_port: int | None = None,
        subscriptions: Sequence[str] = TOPICS,
        wait_ready: bool = True,
        check_ports: bool = True,
    ) -> ConnectorUnderTest:
        """A started connector fed by `upstream` (default: the mock exchange), serving TLS with
        `tls`, requiring `token`, on `grpc_port` (default: a free one); once ready (unless not
        `wait_ready`), holding the upstream `subscriptions` (rule C3; () waits for none)."""
        if self.attached is not None:
            return self._attached(upstream, tls, token, grpc_port, wait_ready, subscriptions)
        exchange = upstream or self.upstream
        values: dict[str, Any] = {
            "upstream": exchange.address,
            "grpc_port": grpc_port if grpc_port is not None else self.free_port(),
            "metrics_port": self.free_port(),
        }
        values.update(tls.launch_values() if tls is not None else {})
        values.update({"token": token} if token is not None else {})
        program = self.launcher.start(
            PROGRAM,
            values,
            tls=tls is not None,
            token=token is not None,
            wait_ready=wait_ready,
            check_ports=check_ports,
        )
        target = ConnectorUnderTest(program, exchange, values["metrics_port"], tls, token)
        self.started.append(target)
        for topic in subscriptions:
            try:
                exchange.wait_for_subscriptions(topic, 1, timeout=STARTUP_SUBSCRIPTIONS_S)
            except TimeoutError as error:
                pytest.fail(
                    f"expected the connector to open its upstream {topic!r} subscription when it starts, "
                    f"before any client subscribes, and hold it (rule C3): {error}"
                )
        return target

    def _attached(
        self,
        upstream: MockExchangeServer | None,
        tls: TlsMaterial | None,
        token: str | None,
        grpc_port: int | None,
        wait_ready: bool,
        subscriptions: Sequence[str],
    ) -> ConnectorUnderTest:
        """--attach: the user's connector, when the scenario asks for the form it runs in."""
        attached, item = self.attached, self.item
        assert attached is not None and item is not None
        refused = [
            (
                upstream is not None and upstream is not attached.mock,
                "feeds the connector from another upstream",
            ),
            (tls is not None, "starts the connector with TLS"),
            (token is not None, "starts the connector requiring a token"),
            (grpc_port is not None, "starts the connector on a port of its own choosing"),
            (not wait_ready, "watches the connector start"),
            (bool(self.started), "starts a second connector"),
            (attached.mock.data_set, "sets the exchange's data before the connector starts"),
        ]
        for wanted, why in refused:
            if wanted:
                not_applicable(item, NotApplicable(attached.manifest.name, mode="attach", why=why))
        program = cast(RunningProgram, AttachedProgram(attached, item))
        target = ConnectorUnderTest(program, attached.mock, attached.metrics_port, fresh=False)
        self.started.append(target)
        for topic in subscriptions:
            try:
                attached.mock.wait_for_subscriptions(topic, 1, timeout=STARTUP_SUBSCRIPTIONS_S)
            except TimeoutError as error:
                pytest.fail(
                    f"expected the attached connector to hold its upstream {topic!r} subscription (rule C3): {error}"
                )
        return target

    async def start(self, **form: Any) -> ConnectorUnderTest:
        """start_sync() for async tests (the same keywords): the event loop runs on meanwhile."""
        return await asyncio.to_thread(lambda: self.start_sync(**form))

    def finish_sync(self) -> None:
        """Teardown: every connector still running gets SIGTERM and must exit 0 (rule C10), and
        must leave no upstream subscription open."""
        if self.attached is not None:
            return  # the attached connector is the user's: it runs on, holding its subscriptions
        problems = []
        for target in reversed(self.started):
            if not target.program.running or target.program.exit_observed:
                continue
            code = target.program.stop()
            if code != 0:
                problems.append(
                    f"expected the connector to exit 0 on SIGTERM (rule C10), got exit code {code}; {target.tail()}"
                )
        exchanges = {id(t.mock): t.mock for t in self.started}.values()
        deadline = time.monotonic() + UPSTREAM_CLOSED_S
        while still := {
            exchange.address: opened
            for exchange in exchanges
            if (opened := {topic: n for topic in TOPICS if (n := exchange.subscriptions(topic))})
        }:
            if time.monotonic() > deadline:
                problems.append(
                    f"expected the stopped connector to close its upstream subscriptions, still open: {still}"
                )
                break
            time.sleep(0.02)
        if problems:
            pytest.fail("; ".join(problems))

    async def finish(self) -> None:
        """finish_sync() for async tests, after closing the channels the test opened."""
        for target in self.started:
            await target.close()
        await asyncio.to_thread(self.finish_sync)


__all__ = ["TOPICS", "ConnectorFactory", "ConnectorUnderTest", "health_name", "read_to_end"]
