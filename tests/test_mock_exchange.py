"""The mock exchange served over gRPC: data, ordered fan-out, symbol filter, counters, failures,
clean stop, and protocol violations surfacing in the test."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.doubles.mock_exchange import MockExchangeServer, MockExchangeViolation
from harness.doubles.mock_handlers import StampClock
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(20)
T = TypeVar("T")


@pytest_asyncio.fixture
async def stub(mock_exchange: MockExchangeServer) -> AsyncIterator[pb_grpc.ExchangeServiceAsyncStub]:
    async with grpc.aio.insecure_channel(mock_exchange.address) as channel:
        yield pb_grpc.ExchangeServiceStub(channel)


def account(balance: str) -> pb.Account:
    return pb.Account(total_balance=balance, equity=balance)


def position(symbol: str, size: str) -> pb.Position:
    return pb.Position(symbol=symbol, side="LONG", size=size, margin_type="CROSS")


async def take(call: AsyncIterable[T], count: int) -> list[T]:
    received: list[T] = []
    async for message in call:
        received.append(message)
        if len(received) == count:
            break
    return received


@pytest.mark.asyncio
async def test_unary_calls_answer_the_spec_data_filtered_by_symbol(
    stub: pb_grpc.ExchangeServiceAsyncStub,
) -> None:
    got = await stub.GetAccount(pb.GetAccountRequest())
    assert (got.total_balance, got.equity, got.leverage) == ("10000.00", "9500.00", "10.0"), got
    assert got.HasField("updated_at")
    every = await stub.GetPositions(pb.GetPositionsRequest())
    assert [p.symbol for p in every.positions] == ["BTCUSDT", "ETHUSDT"]
    btc = await stub.GetPositions(pb.GetPositionsRequest(symbol="BTCUSDT"))
    assert [(p.symbol, p.size) for p in btc.positions] == [("BTCUSDT", "0.5")]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.GetPositions(pb.GetPositionsRequest(symbol="btc/usdt"))
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT, bad.value


@pytest.mark.asyncio
async def test_triggers_reach_every_open_stream_in_order(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    first = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    second = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    await mock_exchange.wait_for_subscriptions_async("account", 2)
    for n in range(50):
        mock_exchange.trigger_account_update(account(f"{n}.00"))
    for call in (first, second):
        received = [a.total_balance for a in await take(call, 50)]
        assert received == [f"{n}.00" for n in range(50)], f"expected 50 updates in order, got {received}"
        call.cancel()
    latest = await stub.GetAccount(pb.GetAccountRequest())
    assert latest.total_balance == "49.00", f"expected GetAccount to return the last trigger, got {latest}"


@pytest.mark.asyncio
async def test_positions_are_filtered_by_symbol_on_the_server(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    btc_only = stub.SubscribePositions(pb.SubscribePositionsRequest(symbol="BTCUSDT"))
    every = stub.SubscribePositions(pb.SubscribePositionsRequest())
    await mock_exchange.wait_for_subscriptions_async("positions", 2)
    for update in (
        position("BTCUSDT", "1"),
        position("ETHUSDT", "2"),
        position("SOLUSDT", "3"),
        position("BTCUSDT", "4"),
    ):
        mock_exchange.trigger_position_update(update)
    everything = [(p.symbol, p.size) for p in await take(every, 4)]
    assert everything == [("BTCUSDT", "1"), ("ETHUSDT", "2"), ("SOLUSDT", "3"), ("BTCUSDT", "4")], everything
    btc = [(p.symbol, p.size) for p in await take(btc_only, 2)]
    assert btc == [("BTCUSDT", "1"), ("BTCUSDT", "4")], f"expected only BTCUSDT, got {btc}"
    btc_only.cancel()
    every.cancel()
    state = await stub.GetPositions(pb.GetPositionsRequest())
    assert [(p.symbol, p.size) for p in state.positions] == [
        ("BTCUSDT", "4"),
        ("ETHUSDT", "2"),
        ("SOLUSDT", "3"),
    ]


@pytest.mark.asyncio
async def test_counters_peers_calls_and_open_streams(mock_exchange: MockExchangeServer) -> None:
    # a private subchannel pool: otherwise both channels of this process share one connection
    separate = [("grpc.use_local_subchannel_pool", 1)]
    async with (
        grpc.aio.insecure_channel(mock_exchange.address) as one,
        grpc.aio.insecure_channel(mock_exchange.address, options=separate) as two,
    ):
        await pb_grpc.ExchangeServiceStub(one).GetAccount(pb.GetAccountRequest())
        await pb_grpc.ExchangeServiceStub(one).GetAccount(pb.GetAccountRequest())
        call = pb_grpc.ExchangeServiceStub(two).SubscribeAccount(pb.SubscribeAccountRequest())
        assert await mock_exchange.wait_for_subscriptions_async("account", 1) == 1
        assert mock_exchange.connection_count == 2, f"expected 2 peers, got {mock_exchange.peers}"
        assert len(mock_exchange.active_peers) == 1, (
            f"expected 1 peer streaming, got {mock_exchange.active_peers}"
        )
        assert mock_exchange.calls == {"GetAccount": 2, "SubscribeAccount": 1}, mock_exchange.calls
        call.cancel()
        for _ in range(200):
            if mock_exchange.subscriptions("account") == 0:
                break
            await asyncio.sleep(0.01)
    assert mock_exchange.subscriptions("account") == 0, "expected the cancelled stream closed"
    assert mock_exchange.total_subscriptions("account") == 1
    with pytest.raises(ValueError, match="unknown topic 'orders'"):
        mock_exchange.subscriptions("orders")


def test_wait_for_subscriptions_says_what_it_saw(mock_exchange: MockExchangeServer) -> None:
    with pytest.raises(TimeoutError) as failure:
        mock_exchange.wait_for_subscriptions("positions", 1, timeout=0.2)
    assert str(failure.value) == (
        "mock exchange: expected at least 1 open 'positions' subscription(s) within 0.2 s, "
        "got 0 (ever opened: 0; calls: none)"
    )


def test_a_blocking_client_in_the_test_thread(mock_exchange: MockExchangeServer) -> None:
    with grpc.insecure_channel(mock_exchange.address) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        call = stub.SubscribeAccount(pb.SubscribeAccountRequest())
        mock_exchange.wait_for_subscriptions("account", 1)
        mock_exchange.trigger_account_update(account("7.00"))
        assert next(call).total_balance == "7.00"
        call.cancel()


@pytest.mark.asyncio
async def test_fail_calls_and_end_streams(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    open_stream = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    await mock_exchange.wait_for_subscriptions_async("account", 1)
    mock_exchange.fail_calls(grpc.StatusCode.UNAVAILABLE, "exchange down")
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.GetAccount(pb.GetAccountRequest())
    assert (unary.value.code(), unary.value.details()) == (grpc.StatusCode.UNAVAILABLE, "exchange down")
    with pytest.raises(grpc.aio.AioRpcError) as stream:
        await take(stub.SubscribePositions(pb.SubscribePositionsRequest()), 1)
    assert stream.value.code() is grpc.StatusCode.UNAVAILABLE
    mock_exchange.fail_calls(None)
    assert (await stub.GetAccount(pb.GetAccountRequest())).total_balance == "10000.00"
    # an open stream is not affected by fail_calls; end_streams ends it after what was triggered
    mock_exchange.trigger_account_update(account("1.00"))
    mock_exchange.end_streams(grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for update in open_stream:
            received.append(update.total_balance)
    assert received == ["1.00"], f"expected the update before the end, got {received}"
    assert (ended.value.code(), ended.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow")
    with pytest.raises(ValueError, match="needs an error status code"):
        mock_exchange.fail_calls(grpc.StatusCode.OK)


def test_health_is_serving(mock_exchange: MockExchangeServer) -> None:
    with grpc.insecure_channel(mock_exchange.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.asyncio
async def test_stop_ends_streams_joins_the_thread_and_restart_keeps_the_port() -> None:
    server = MockExchangeServer().start()
    port = server.port
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ExchangeServiceStub(channel)
            call = stub.SubscribeAccount(pb.SubscribeAccountRequest())
            await server.wait_for_subscriptions_async("account", 1)
            await asyncio.to_thread(server.stop)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await take(call, 1)
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE, ended.value
            assert not [t for t in threading.enumerate() if t.name == "mock-exchange"], (
                "expected the thread joined"
            )
            server.stop()  # idempotent
            server.start()
            assert server.port == port, f"expected a restart on port {port}, got {server.port}"
            answer = await stub.GetAccount(pb.GetAccountRequest(), wait_for_ready=True, timeout=5)
            assert answer.total_balance == "10000.00"
    finally:
        server.stop()
    assert server.violations == []


@pytest.mark.asyncio
async def test_an_exception_in_a_handler_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    with MockExchangeServer() as server:
        monkeypatch.setattr(server._book, "current_account", lambda: 1 / 0)
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await pb_grpc.ExchangeServiceStub(channel).GetAccount(pb.GetAccountRequest())
    assert failure.value.code() is grpc.StatusCode.UNKNOWN
    with pytest.raises(MockExchangeViolation) as violation:
        server.raise_violations()
    message = str(violation.value)
    assert message.startswith(
        "mock exchange recorded 1 protocol violation(s):\n  - GetAccount from ipv4:127.0.0.1:"
    )
    assert message.endswith("handler raised ZeroDivisionError: division by zero"), message


def test_the_fixture_reraises_violations_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:asyncio -p no:cacheprovider\n")
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            """
            import grpc
            from opensqt.exchange.v1 import exchange_pb2 as pb, exchange_pb2_grpc as pb_grpc

            def test_uses_a_broken_mock(mock_exchange, monkeypatch):
                monkeypatch.setattr(mock_exchange._book, "current_account", lambda: 1 / 0)
                with grpc.insecure_channel(mock_exchange.address) as channel:
                    try:
                        pb_grpc.ExchangeServiceStub(channel).GetAccount(pb.GetAccountRequest())
                    except grpc.RpcError:
                        pass
            """
        )
    )
    result = pytester.runpytest("--report-dir", str(pytester.path / "reports"))
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*MockExchangeViolation: mock exchange recorded 1 protocol violation(s):*"])


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(
            RuntimeError, match=rf"mock exchange cannot serve on 127\.0\.0\.1:{port} \(is the port in use\?\)"
        ):
            MockExchangeServer(port=port).start()
    assert not [t for t in threading.enumerate() if t.name == "mock-exchange"], "expected no thread left"


def test_the_stamp_clock_moves_and_paces_the_send_time() -> None:
    since = 1_700_000_000_123_456_789
    assert StampClock(0, 1.0, since).stamp_ns(since + 5) == since + 5
    assert StampClock(-8_000_000_000, 1.0, since).stamp_ns(since + 10**9) == since - 7 * 10**9
    # half pace: two seconds later the stamp has advanced one, nanoseconds kept
    assert StampClock(0, 0.5, since).stamp_ns(since + 2 * 10**9) == since + 10**9


@pytest.mark.asyncio
async def test_stamp_on_send_stamps_with_the_offset(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    call = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    await mock_exchange.wait_for_subscriptions_async("account", 1)
    mock_exchange.stamp_on_send(offset=-8.0)
    mock_exchange.trigger_account_update(account("1.00"))
    [got] = await take(call, 1)
    behind = time.time() - got.updated_at.ToNanoseconds() / 1e9
    assert 7.5 < behind < 9.0, f"expected a stamp 8 s behind the send time, got {behind:.3f} s"
    call.cancel()
    with pytest.raises(ValueError, match="pace must be > 0"):
        mock_exchange.stamp_on_send(pace=0.0)


@pytest.mark.asyncio
async def test_write_behind_is_how_long_an_update_waited_in_the_mock(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    call = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    await mock_exchange.wait_for_subscriptions_async("account", 1)
    mock_exchange.trigger_account_update(account("1.00"))
    mock_exchange._post(time.sleep, 0.3)  # the mock's loop is busy before its writer runs
    await take(call, 1)
    behind = mock_exchange.write_behind_max(reset=True)
    assert 0.25 < behind < 2.0, f"expected the update to wait about 0.3 s in the mock, got {behind:.3f} s"
    assert mock_exchange.write_behind_max() == 0.0
    call.cancel()


async def symbols_answered(stub: pb_grpc.ExchangeServiceAsyncStub, symbol: str) -> list[str]:
    answer = await stub.GetPositions(pb.GetPositionsRequest(symbol=symbol), timeout=10)
    return [p.symbol for p in answer.positions]


@pytest.mark.asyncio
async def test_held_calls_answer_once_released_oldest_first(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    mock_exchange.hold_calls("GetPositions")
    first = asyncio.create_task(symbols_answered(stub, "BTCUSDT"))
    assert await asyncio.to_thread(mock_exchange.wait_until, lambda m: m.held_calls() == 1, 5.0)
    second = asyncio.create_task(symbols_answered(stub, "ETHUSDT"))
    assert await asyncio.to_thread(mock_exchange.wait_until, lambda m: m.held_calls() == 2, 5.0)
    assert (await stub.GetAccount(pb.GetAccountRequest(), timeout=5)).total_balance == "10000.00"
    assert mock_exchange.release_calls() == 1
    assert await asyncio.wait_for(first, 5) == ["BTCUSDT"]
    assert not second.done() and mock_exchange.held_calls() == 1
    mock_exchange.hold_calls("GetPositions", enabled=False)  # releases the rest
    assert await asyncio.wait_for(second, 5) == ["ETHUSDT"]
    assert await symbols_answered(stub, "") == ["BTCUSDT", "ETHUSDT"]
