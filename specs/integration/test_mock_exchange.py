"""§4.3: the suite's own mock exchange (harness/doubles/mock_exchange.py), the controllable exchange
every other scenario drives. These are self-checks of the suite (catalogue `subject: suite`):
reported apart, never counted for the system under test. It is reached over loopback gRPC, as a
connector reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from harness.doubles.mock_exchange import MockExchangeServer
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(30)]


@pytest_asyncio.fixture
async def stub(mock_exchange: MockExchangeServer) -> AsyncIterator[pb_grpc.ExchangeServiceAsyncStub]:
    channel = grpc.aio.insecure_channel(mock_exchange.address)
    try:
        yield pb_grpc.ExchangeServiceStub(channel)  # type: ignore[misc]
    finally:
        await channel.close()


async def read(call: grpc.aio.UnaryStreamCall, count: int) -> list[object]:  # type: ignore[type-arg]
    return [await asyncio.wait_for(call.read(), 5.0) for _ in range(count)]


@pytest.mark.scenario("4.3.1.a")
async def test_a_subscription_runs_until_the_client_cancels_it(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    call = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    await mock_exchange.wait_for_subscriptions_async("account", 1)
    await asyncio.sleep(0.3)
    assert not call.done(), "expected the mock's stream to stay open while not cancelled"
    call.cancel()
    await asyncio.to_thread(mock_exchange.wait_until, lambda mock: mock.subscriptions("account") == 0, 5.0)
    assert mock_exchange.subscriptions("account") == 0, (
        f"expected the cancelled stream unregistered, got {mock_exchange.subscriptions('account')}"
    )


@pytest.mark.scenario("4.3.1.b")
async def test_trigger_account_update_reaches_every_subscriber(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    calls = [stub.SubscribeAccount(pb.SubscribeAccountRequest()) for _ in range(2)]
    await mock_exchange.wait_for_subscriptions_async("account", 2)
    updates = [spec_account(equity=f"{n}.00") for n in range(1, 4)]
    for update in updates:
        mock_exchange.trigger_account_update(update)
    for index, call in enumerate(calls):
        got = await read(call, len(updates))
        assert got == updates, f"subscriber {index}: expected the 3 updates in order, got {got}"
        call.cancel()
    current = await stub.GetAccount(pb.GetAccountRequest(), timeout=5)
    assert current == updates[-1], f"expected GetAccount to return the last update, got {current}"


@pytest.mark.scenario("4.3.1.c")
async def test_trigger_position_update_reaches_every_subscriber_and_the_mock_fails_on_demand(
    mock_exchange: MockExchangeServer, stub: pb_grpc.ExchangeServiceAsyncStub
) -> None:
    calls = [stub.SubscribePositions(pb.SubscribePositionsRequest(symbol=s)) for s in ("", "ETHUSDT")]
    await mock_exchange.wait_for_subscriptions_async("positions", 2)
    moved = pb.Position()
    moved.CopyFrom(spec_positions()[1])
    moved.mark_price = "2950.00"
    mock_exchange.trigger_position_update(moved)
    for call in calls:
        assert await read(call, 1) == [moved], "expected both subscribers to get the ETHUSDT update"

    mock_exchange.end_streams(grpc.StatusCode.UNAVAILABLE, "exchange down for the test")
    mock_exchange.fail_calls(grpc.StatusCode.UNAVAILABLE, "exchange down for the test")
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), 5.0)
        assert (ended.value.code(), ended.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "exchange down for the test",
        ), f"expected the streams ended with the status asked for, got {ended.value.code()}"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetAccount(pb.GetAccountRequest(), timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, f"GetAccount: got {failed.value.code()}"
    mock_exchange.fail_calls(None)
    assert (await stub.GetAccount(pb.GetAccountRequest(), timeout=5)).total_balance, (
        "expected the mock to answer again once its failure is lifted"
    )
