"""§4.2.2 ExchangeServer SubscribePositions: the server-side symbol filter.

Each test runs against the connector in-process and as a program (see conftest.py), fed by the
harness's mock exchange over the `grpc` adapter. The connector holds ONE upstream positions
subscription for every symbol and filters for each client itself.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from opensqt.exchange.testdata import spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.conftest import SERVER_TESTS, ConnectorUnderTest, read_stream

pytestmark = [*SERVER_TESTS, pytest.mark.timeout(60)]


def position(symbol: str, mark: str) -> pb.Position:
    """A valid position of `symbol` (the spec's, or one built on BTCUSDT's) at mark price `mark`."""
    moved = pb.Position()
    moved.CopyFrom(next((p for p in spec_positions() if p.symbol == symbol), spec_positions()[0]))
    moved.symbol = symbol
    moved.mark_price = mark
    return moved


def subscribe(connector: ConnectorUnderTest, symbol: str) -> Any:
    return connector.stub(connector.channel()).SubscribePositions(
        pb.SubscribePositionsRequest(symbol=symbol), metadata=connector.metadata
    )


async def subscribed(connector: ConnectorUnderTest, *symbols: str) -> list[Any]:
    """One SubscribePositions call per symbol, each held by the connector (its gauge, rule C15)."""
    calls = [subscribe(connector, symbol) for symbol in symbols]
    await connector.wait_subscribers("positions", len(symbols))
    return calls


def triggered(connector: ConnectorUnderTest, sent: list[pb.Position]) -> list[pb.Position]:
    for update in sent:
        connector.mock.trigger_position_update(update)
    return sent


async def read(call: Any, count: int, scenario: str, timeout: float = 15.0) -> list[pb.Position]:
    return await read_stream(call, count, scenario, noun="positions", timeout=timeout)


def described(positions: list[pb.Position]) -> list[str]:
    return [f"{p.symbol}@{p.mark_price}" for p in positions]


# Filtering is shown by order: updates reach a subscriber in the order they were triggered, so
# when the subscriber's next message after the others is the final "fence" update of its own
# symbol, nothing of another symbol was forwarded in between.


@pytest.mark.scenario("4.2.2.a")
async def test_symbol_filter_forwards_only_that_symbol(connector: ConnectorUnderTest) -> None:
    (call,) = await subscribed(connector, "BTCUSDT")
    sent = triggered(
        connector,
        [
            position("BTCUSDT", "41100.00"),
            position("ETHUSDT", "2910.00"),
            position("ETHUSDT", "2920.00"),
            position("BTCUSDT", "41200.00"),
            position("ETHUSDT", "2930.00"),
            position("BTCUSDT", "41300.00"),  # the fence
        ],
    )
    received = await read(call, 3, "4.2.2.a")
    expected = [p for p in sent if p.symbol == "BTCUSDT"]
    assert received == expected, (
        f"expected only the BTCUSDT updates {described(expected)}, got {described(received)}"
    )


@pytest.mark.scenario("4.2.2.b")
async def test_without_filter_every_symbol_is_forwarded(connector: ConnectorUnderTest) -> None:
    (call,) = await subscribed(connector, "")
    marks = {"BTCUSDT": "41100.00", "ETHUSDT": "2910.00", "SOLUSDT": "151.00"}
    sent = triggered(
        connector, [*(position(s, m) for s, m in marks.items()), position("BTCUSDT", "41200.00")]
    )
    received = await read(call, len(sent), "4.2.2.b")
    assert received == sent, f"expected {described(sent)}, got {described(received)}"


@pytest.mark.scenario("4.2.2.ac1")
async def test_filter_is_exact_and_happens_in_the_server(connector: ConnectorUnderTest) -> None:
    watched = ("BTCUSDT", "BTC", "ETHUSDT")
    subscribers = dict(zip(watched, await subscribed(connector, *watched), strict=True))
    symbols = [
        "BTCUSDT",
        "BTC",
        "BTCUSDTPERP",
        "XBTCUSDT",
        "ETHUSDT",
        "ETHUSDT2",
        "BTCUSDT",
        "BTC",
        "ETHUSDT",
    ]
    sent = triggered(connector, [position(symbol, f"{100 + n}.00") for n, symbol in enumerate(symbols)])
    for symbol, call in subscribers.items():
        expected = [p for p in sent if p.symbol == symbol]
        received = await read(call, len(expected), f"4.2.2.ac1 ({symbol})")
        assert received == expected, (
            f"under rule C5, subscriber of {symbol!r}: expected exactly {described(expected)} "
            f"(no prefix or look-alike matches), got {described(received)}"
        )
    mock = connector.mock
    assert mock.subscriptions("positions") == 1, (
        f"under rule C5, expected the connector to filter itself over ONE upstream positions subscription, "
        f"got {mock.subscriptions('positions')}"
    )
    call = subscribe(connector, "btcusdt")
    with pytest.raises(grpc.aio.AioRpcError) as lower:
        await read(call, 1, "4.2.2.ac1")
    assert lower.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (
        f"under rule C5, expected a lower-case symbol rejected (no case-insensitive match), got {lower.value.code()}"
    )


@pytest.mark.scenario("4.2.2.ac2")
async def test_empty_symbol_forwards_every_update_of_every_symbol(connector: ConnectorUnderTest) -> None:
    everything, only_eth = await subscribed(connector, "", "ETHUSDT")
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
    sent = triggered(connector, [position(symbols[n % len(symbols)], f"{200 + n}.00") for n in range(25)])
    received = await read(everything, len(sent), "4.2.2.ac2")
    assert received == sent, f"expected all {len(sent)} updates in order, got {described(received)}"
    eth = [p for p in sent if p.symbol == "ETHUSDT"]
    got_eth = await read(only_eth, len(eth), "4.2.2.ac2")
    assert got_eth == eth, (
        f"expected the ETHUSDT subscriber to get its own {described(eth)}, got {described(got_eth)}"
    )

    stub = connector.stub()
    listed = await stub.GetPositions(
        pb.GetPositionsRequest(symbol=""), timeout=5, metadata=connector.metadata
    )
    assert sorted(p.symbol for p in listed.positions) == sorted(symbols), (
        f"expected GetPositions('') to list every symbol, got {[p.symbol for p in listed.positions]}"
    )
    one = await stub.GetPositions(
        pb.GetPositionsRequest(symbol="SOLUSDT"), timeout=5, metadata=connector.metadata
    )
    assert [p.symbol for p in one.positions] == ["SOLUSDT"], (
        f"expected GetPositions('SOLUSDT') to list SOLUSDT only, got {[p.symbol for p in one.positions]}"
    )
