"""§3.2 the server's lifecycle, for the SUT's exchange_connector program: start binds the port
(3.2.1.a), an exit releases it (3.2.1.b), a shutdown with clients tells them (3.2.1.c), and more
SIGTERMs during a shutdown are harmless (3.2.1.d), and a port in use is an error that names it
(3.2.1.x2). Rules C60-C64 of docs/sut-manifest.md.

Unit level in the catalogue, as in the spec (§3.2 is one of its unit tests): one component, the
connector, runs as a subprocess started by the harness launcher, fed by the mock exchange; the test
is its client over loopback gRPC and probes its port with plain sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.doubles.mock_exchange import MockExchangeServer, spec_account
from harness.sut.connector import ConnectorFactory, read_to_end
from harness.sut.launch import RunningProgram
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

SHUTTING_DOWN = "shutting down"
FIRST_UPDATE_WAIT_S = 10.0
STREAM_END_WAIT_S = 5.0
RELEASE_WAIT_S = 2.0
SIGNAL_EVERY_S = 0.002
SIGNALS_FOR_S = 0.5
BUSY_PORT_EXIT_WAIT_S = 15.0

pytestmark = [pytest.mark.unit, pytest.mark.asyncio, pytest.mark.timeout(90)]


def bind_error(port: int, *, reuse_address: bool) -> OSError | None:
    """Bind and listen on 127.0.0.1:port as a restarting server would (SO_REUSEADDR, so connections of
    the last owner left in TIME_WAIT do not count, a listener does); the error, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError as error:
            return error
    return None


def keep_signalling(pid: int, duration: float) -> int:
    """SIGTERM `pid` every SIGNAL_EVERY_S for `duration` s or until it is gone; how many were sent."""
    sent = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(SIGNAL_EVERY_S)
    return sent


def released(port: int, timeout: float) -> OSError | None:
    """Retry bind_error() for up to `timeout` s; the last error, or None once the port could be bound."""
    deadline = time.monotonic() + timeout
    while (error := bind_error(port, reuse_address=True)) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return error


async def started(connectors: ConnectorFactory, port: int) -> RunningProgram:
    """The SUT's connector on 127.0.0.1:`port`, fed by the mock exchange, once ready."""
    return (await connectors.start(grpc_port=port, subscriptions=())).program


def account(n: int) -> pb.Account:
    update = spec_account()
    update.total_balance = f"{20000 + n}.00"
    return update


async def streams_flowing(
    mock: MockExchangeServer, streams: list[tuple[list[Any], asyncio.Task[Any]]], scenario: str
) -> None:
    """Trigger updates until every stream has one: each subscription is then in place at the connector."""
    deadline = time.monotonic() + FIRST_UPDATE_WAIT_S
    n = 0
    while not all(received for received, _ in streams):
        for _, reader in streams:
            if reader.done():
                pytest.fail(
                    f"under rule C4, expected every stream to stay open, one ended: {reader.result()}"
                )
        if time.monotonic() > deadline:
            pytest.fail(f"under rule C4, expected an update on every stream within {FIRST_UPDATE_WAIT_S} s")
        n += 1
        mock.trigger_account_update(account(n))
        position = pb.Position(symbol="BTCUSDT", side="LONG", size=f"0.{n}", entry_price="1.00")
        position.mark_price, position.leverage, position.unrealized_pnl = "1.00", "1", "0.00"
        position.liquidation, position.margin_type = "0.50", "CROSS"
        mock.trigger_position_update(position)
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------------- 3.2.1.a


@pytest.mark.scenario("3.2.1.a")
async def test_start_binds_the_port_and_accepts_calls_at_once(
    connectors: ConnectorFactory, free_port: Callable[[], int]
) -> None:
    port = free_port()
    connector = await started(connectors, port)
    taken = bind_error(port, reuse_address=True)
    assert taken is not None, (
        f"expected 127.0.0.1:{port} held by the connector once it is ready, "
        f"but another socket could bind and listen on it"
    )
    async with grpc.aio.insecure_channel(connector.address) as channel:
        try:
            got = await pb_grpc.ExchangeServiceStub(channel).GetAccount(pb.GetAccountRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            pytest.fail(
                f"expected GetAccount answered at once after start, "
                f"got {error.code().name} {error.details()!r}"
            )
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert got.total_balance == "10000.00", (
        f"expected the exchange's account (10000.00), got {got.total_balance!r}"
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, (
        f"expected health SERVING, got {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    )


# ---------------------------------------------------------------------------------------------- 3.2.1.b


@pytest.mark.scenario("3.2.1.b")
async def test_exit_releases_the_port(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory, free_port: Callable[[], int]
) -> None:
    port = free_port()
    connector = await started(connectors, port)
    async with grpc.aio.insecure_channel(connector.address) as channel:
        received: list[Any] = []
        call = pb_grpc.ExchangeServiceStub(channel).SubscribeAccount(pb.SubscribeAccountRequest())
        reader = asyncio.create_task(read_to_end(call, received))
        await streams_flowing(mock_exchange, [(received, reader)], "3.2.1.b")
        code = await asyncio.to_thread(connector.stop)
        await asyncio.wait({reader}, timeout=STREAM_END_WAIT_S)
        reader.cancel()
    assert code == 0, f"expected exit code 0 after SIGTERM, got {code}; {connector.tail()}"
    error = await asyncio.to_thread(released, port, RELEASE_WAIT_S)
    assert error is None, (
        f"expected 127.0.0.1:{port} free within {RELEASE_WAIT_S} s of the exit, binding it failed: {error}"
    )
    again = await started(connectors, port)
    assert again.running, f"expected a new connector to serve on port {port}"


# ---------------------------------------------------------------------------------------------- 3.2.1.c


@pytest.mark.scenario("3.2.1.c")
async def test_shutdown_tells_every_active_client(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory, free_port: Callable[[], int]
) -> None:
    connector = await started(connectors, free_port())
    async with (
        grpc.aio.insecure_channel(connector.address) as first,
        grpc.aio.insecure_channel(
            connector.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as second,
    ):
        calls = [
            (
                "account stream, client 1",
                pb_grpc.ExchangeServiceStub(first).SubscribeAccount(pb.SubscribeAccountRequest()),
            ),
            (
                "account stream, client 2",
                pb_grpc.ExchangeServiceStub(second).SubscribeAccount(pb.SubscribeAccountRequest()),
            ),
            (
                "BTCUSDT position stream, client 2",
                pb_grpc.ExchangeServiceStub(second).SubscribePositions(
                    pb.SubscribePositionsRequest(symbol="BTCUSDT")
                ),
            ),
        ]
        streams: list[tuple[list[Any], asyncio.Task[Any]]] = []
        for _, call in calls:
            received: list[Any] = []
            streams.append((received, asyncio.create_task(read_to_end(call, received))))
        await streams_flowing(mock_exchange, streams, "3.2.1.c")
        code = await asyncio.to_thread(connector.stop)
        done, _ = await asyncio.wait({reader for _, reader in streams}, timeout=STREAM_END_WAIT_S)
        seen = []
        for (name, _), (_, reader) in zip(calls, streams, strict=True):
            if reader not in done:
                reader.cancel()
                seen.append((name, "still open", ""))
                continue
            ended = reader.result()
            seen.append(
                (
                    name,
                    "OK" if ended is None else ended.code().name,
                    "" if ended is None else ended.details() or "",
                )
            )
    wrong = [entry for entry in seen if entry[1] != "UNAVAILABLE" or SHUTTING_DOWN not in entry[2]]
    assert not wrong, (
        f"expected every open stream to end with UNAVAILABLE {SHUTTING_DOWN!r} "
        f"sent by the connector; the clients saw {seen}"
    )
    assert code == 0, f"expected exit code 0 after SIGTERM, got {code}; {connector.tail()}"


# ---------------------------------------------------------------------------------------------- 3.2.1.d


@pytest.mark.scenario("3.2.1.d")
async def test_more_sigterms_during_shutdown_are_harmless(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory, free_port: Callable[[], int]
) -> None:
    connector = await started(connectors, free_port())
    async with grpc.aio.insecure_channel(connector.address) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        received: list[Any] = []
        reader = asyncio.create_task(
            read_to_end(stub.SubscribeAccount(pb.SubscribeAccountRequest()), received)
        )
        await streams_flowing(mock_exchange, [(received, reader)], "3.2.1.d")
        # a SIGTERM, then more every SIGNAL_EVERY_S until the process is gone: some land during the shutdown
        sent = await asyncio.to_thread(keep_signalling, connector.pid, SIGNALS_FOR_S)
        try:
            code = await asyncio.to_thread(connector.wait, connector.stop_timeout_s)
        except TimeoutError:
            pytest.fail(
                f"expected an exit within {connector.stop_timeout_s} s of {sent} SIGTERMs, "
                f"the connector kept running; {connector.tail()}"
            )
        await asyncio.wait({reader}, timeout=STREAM_END_WAIT_S)
        reader.cancel()
    assert code == 0, (
        f"expected exit code 0 after {sent} SIGTERMs {SIGNAL_EVERY_S * 1000:g} ms apart, got {code}; {connector.tail()}"
    )


# ---------------------------------------------------------------------------------------------- 3.2.1.x2


@contextlib.contextmanager
def holding(port: int, *, reuse_port: bool) -> Iterator[socket.socket]:
    """A listener on 127.0.0.1:port for the block; with SO_REUSEPORT, as grpc's servers bind by default."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        if reuse_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield holder


@pytest.mark.scenario("3.2.1.x2")
async def test_start_on_a_port_in_use_fails_and_names_the_port(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory, free_port: Callable[[], int]
) -> None:
    for reuse_port, holder in (
        (False, "a listener"),
        (True, "a listener with SO_REUSEPORT (grpc's default)"),
    ):
        port = free_port()
        with holding(port, reuse_port=reuse_port):
            connector = (
                await connectors.start(grpc_port=port, subscriptions=(), wait_ready=False, check_ports=False)
            ).program
            try:
                code = await asyncio.to_thread(connector.wait, BUSY_PORT_EXIT_WAIT_S)
            except TimeoutError:
                connector.kill()
                pytest.fail(
                    f"expected the connector to exit with a non-zero code within "
                    f"{BUSY_PORT_EXIT_WAIT_S:g} s when 127.0.0.1:{port} is held by {holder}, it kept running "
                    f"(sharing or waiting for the port); {connector.tail()}"
                )
        assert code > 0, (
            f"expected a non-zero exit code when 127.0.0.1:{port} is held by {holder}, "
            f"got {code}; {connector.tail()}"
        )
        said = "\n".join(connector.log_lines() + connector.output_lines())
        assert str(port) in said, (
            f"expected the connector's log to name the port {port} it could not "
            f"listen on (held by {holder}), it does not; {connector.tail()}"
        )
