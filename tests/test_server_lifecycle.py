"""The Python ExchangeServer's lifecycle in-process: start (port 0 reported, a taken port refused),
health before the upstream is up, stop releasing the port, graceful shutdown (NOT_SERVING first,
streams ended with UNAVAILABLE, the grace period bounded) and double stop. The catalogue's §3.2
scenarios check the connector program from outside (specs/unit/test_connector_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from implementation.adapters.mock import MockExchange
from implementation.connector_core.server import SERVICE_NAME, ExchangeServer, ListenError
from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import ExchangeUnavailable
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.timeout(30)]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST_BACKOFF = ReconnectPolicy(initial_backoff=0.02, max_backoff=0.1, jitter=0.0)


@pytest_asyncio.fixture
async def server(mock: MockExchange) -> AsyncIterator[ExchangeServer]:
    server = ExchangeServer(mock, grace_period=5.0, backoff=FAST_BACKOFF)
    try:
        yield server
    finally:
        mock.release_calls()
        await server.stop(0.5)


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2.0
    )
    return int(response.status)


async def wait_subscribers(server: ExchangeServer, topic: str, count: int, scenario: str) -> None:
    deadline = time.monotonic() + 5.0
    while server.hub.subscriber_count(topic) != count:
        if time.monotonic() > deadline:
            pytest.fail(
                f"{scenario}: expected {count} {topic} subscribers, got {server.hub.subscriber_count(topic)}"
            )
        await asyncio.sleep(0.01)


async def call_arrived(mock: MockExchange, scenario: str) -> None:
    """Until the exchange has received get_account (the call is in flight)."""
    deadline = time.monotonic() + 5.0
    while not mock.calls["get_account"]:
        if time.monotonic() > deadline:
            pytest.fail(f"{scenario}: the GetAccount call never reached the exchange")
        await asyncio.sleep(0.01)


async def stream_end(call: Any) -> grpc.aio.AioRpcError:
    """The error that ends a stream (it must end with one, within 5 s)."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("expected the stream to end with an error status, it ended OK")


# ---------------------------------------------------------------------------------------------- 3.2.1.a


@pytest.mark.asyncio
async def test_start_binds_port_zero_reports_it_and_accepts_calls(
    server: ExchangeServer, mock: MockExchange
) -> None:
    port = await server.start("127.0.0.1:0")
    assert port > 0 and server.port == port, f"3.2.1.a: expected the bound port reported, got {port}"
    assert server.address == f"127.0.0.1:{port}", (
        f"3.2.1.a: expected address 127.0.0.1:{port}, got {server.address}"
    )
    await server.wait_serving(5.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        account = await pb_grpc.ExchangeServiceStub(channel).GetAccount(pb.GetAccountRequest(), timeout=5)
        assert account == mock.account, f"3.2.1.a: expected the exchange's account, got {account}"
        for service in ("", SERVICE_NAME):
            status = await health_status(channel, service)
            assert status == SERVING, f"3.2.1.a: expected health {service!r} SERVING, got {status}"
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert SERVICE_NAME in names, f"3.2.1.a: expected reflection to list {SERVICE_NAME}, got {names}"


@pytest.mark.asyncio
async def test_start_binds_the_given_port_and_refuses_a_taken_one(
    server: ExchangeServer, free_port: Any
) -> None:
    wanted = free_port()
    port = await server.start(f"127.0.0.1:{wanted}")
    assert port == wanted, f"3.2.1.a: expected port {wanted}, got {port}"
    other = ExchangeServer(MockExchange())
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{wanted}"):
        await other.start(f"127.0.0.1:{wanted}")
    await other.stop()


@pytest.mark.asyncio
async def test_health_is_not_serving_until_the_upstream_is_up(
    server: ExchangeServer, mock: MockExchange
) -> None:
    mock.fail_with(ExchangeUnavailable("exchange still starting"))
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        await asyncio.sleep(0.1)
        status = await health_status(channel)
        assert status == NOT_SERVING, f"3.2.1.a: expected NOT_SERVING before the upstream is up, got {status}"
        call = pb_grpc.ExchangeServiceStub(channel).SubscribeAccount(pb.SubscribeAccountRequest())
        error = await stream_end(call)
        assert error.code() is grpc.StatusCode.UNAVAILABLE, (
            f"3.2.1.a: expected UNAVAILABLE, got {error.code()}"
        )
        assert "exchange still starting" in (error.details() or ""), f"3.2.1.a: got {error.details()!r}"
        mock.fail_with(None)
        await server.wait_serving(5.0)
        status = await health_status(channel)
        assert status == SERVING, f"3.2.1.a: expected SERVING once the upstream is up, got {status}"


# ---------------------------------------------------------------------------------------------- 3.2.1.b


@pytest.mark.asyncio
async def test_stop_releases_the_port(server: ExchangeServer) -> None:
    port = await server.start()
    await server.wait_serving(5.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.ExchangeServiceStub(channel).SubscribeAccount(pb.SubscribeAccountRequest())
        await wait_subscribers(server, "account", 1, "3.2.1.b")
        await server.stop(1.0)
        await stream_end(call)
    # Like any server restarting on its port, the probe sets SO_REUSEADDR: the connection the server
    # closed may linger in TIME_WAIT, but no socket may still be listening.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError as error:
            pytest.fail(f"3.2.1.b: expected port {port} free after stop, binding it failed: {error}")
    successor = ExchangeServer(MockExchange())
    try:
        again = await successor.start(f"127.0.0.1:{port}")
        assert again == port, f"3.2.1.b: expected a new server to bind port {port}, got {again}"
    finally:
        await successor.stop(0)


# ---------------------------------------------------------------------------------------------- 3.2.1.c


@pytest.mark.exclusive  # time bounds, as 3.2.1.c: alone, before the fault matrix starts
@pytest.mark.asyncio
async def test_shutdown_goes_not_serving_first_then_ends_streams_with_unavailable(
    server: ExchangeServer, mock: MockExchange
) -> None:
    await server.start()
    await server.wait_serving(5.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        streams: list[Any] = [stub.SubscribeAccount(pb.SubscribeAccountRequest()) for _ in range(2)]
        streams.append(stub.SubscribePositions(pb.SubscribePositionsRequest(symbol="BTCUSDT")))
        await wait_subscribers(server, "account", 2, "3.2.1.c")
        await wait_subscribers(server, "positions", 1, "3.2.1.c")
        mock.hold_calls()  # a call in flight keeps the server draining while we look
        in_flight = stub.GetAccount(pb.GetAccountRequest(), timeout=10)
        await call_arrived(mock, "3.2.1.c")

        stopping = asyncio.create_task(server.stop(5.0))
        watched = await asyncio.wait_for(watch.read(), 5.0)
        assert watched.status == NOT_SERVING, (
            f"3.2.1.c: expected the health watch to see NOT_SERVING, got {watched}"
        )
        for call in streams:
            error = await asyncio.wait_for(stream_end(call), 5.0)
            assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "shutting down"), (
                f"3.2.1.c: expected UNAVAILABLE 'shutting down', got {error.code()} {error.details()!r}"
            )
        status = await health_status(channel)
        assert status == NOT_SERVING, f"3.2.1.c: expected NOT_SERVING while draining, got {status}"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetAccount(pb.GetAccountRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, (
            f"3.2.1.c: new calls refused, got {refused.value}"
        )
        assert not stopping.done(), "3.2.1.c: expected stop() to wait for the call in flight"

        mock.release_calls()
        answered = await in_flight
        assert answered == mock.account, (
            "3.2.1.c: expected the call in flight to complete during the grace period"
        )
        started = time.monotonic()
        await asyncio.wait_for(stopping, 5.0)
        waited = time.monotonic() - started
        assert waited < 2.0, f"3.2.1.c: expected stop() to finish once drained, it took {waited:.2f} s more"
        watch.cancel()


@pytest.mark.exclusive  # time bounds, as 3.2.1.c: alone, before the fault matrix starts
@pytest.mark.asyncio
async def test_shutdown_grace_period_is_bounded(server: ExchangeServer, mock: MockExchange) -> None:
    await server.start()
    await server.wait_serving(5.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        mock.hold_calls()  # never released: the grace period has to end it
        stuck = pb_grpc.ExchangeServiceStub(channel).GetAccount(pb.GetAccountRequest(), timeout=20)
        await call_arrived(mock, "3.2.1.c")
        started = time.monotonic()
        await asyncio.wait_for(server.stop(0.5), 10.0)
        took = time.monotonic() - started
        assert 0.4 < took < 3.0, f"3.2.1.c: expected stop(grace=0.5) to take about 0.5 s, took {took:.2f} s"
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await stuck
        assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), (
            f"3.2.1.c: expected the call cut at the end of the grace period, got {cut.value.code()}"
        )


# ---------------------------------------------------------------------------------------------- 3.2.1.d


@pytest.mark.asyncio
async def test_double_stop_is_harmless(mock: MockExchange) -> None:
    never_started = ExchangeServer(MockExchange())
    await asyncio.wait_for(never_started.stop(), 5.0)

    server = ExchangeServer(mock)
    await server.start()
    await server.wait_serving(5.0)
    await asyncio.wait_for(asyncio.gather(server.stop(1.0), server.stop(1.0)), 10.0)
    await asyncio.wait_for(server.stop(1.0), 5.0)  # and once more, after it stopped
    assert mock.closed and mock.calls["close"] == 1, (
        f"3.2.1.d: expected the exchange closed exactly once, got closed={mock.closed} calls={mock.calls['close']}"
    )
