"""The broadcast hub's internals: ordering, the slow-subscriber policy, cleanup, upstream recovery.

The hub runs in the test's event loop over the in-process MockExchange; no gRPC server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from implementation.adapters.mock import MockExchange
from implementation.connector_core.hub import ACCOUNT, POSITIONS, Hub, SubscriptionEnded
from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import ExchangeUnavailable
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from tests.conftest import serving

pytestmark = pytest.mark.timeout(10)
FAST_BACKOFF = ReconnectPolicy(initial_backoff=0.01, max_backoff=0.05, jitter=0.0)


def account(n: int) -> pb.Account:
    """A distinct account per `n` (fixed timestamp, so equal messages compare equal)."""
    update = spec_account(total_balance=f"{n}.00")
    update.updated_at.FromSeconds(1_700_000_000 + n)
    return update


def position(symbol: str, mark: str = "100.00") -> pb.Position:
    template = pb.Position()
    template.CopyFrom(spec_positions()[0])
    template.symbol = symbol
    template.mark_price = mark
    return template


class Recorder:
    def __init__(self) -> None:
        self.states: list[bool] = []

    async def __call__(self, serving: bool) -> None:
        self.states.append(serving)


@pytest_asyncio.fixture
async def hub(mock: MockExchange) -> AsyncIterator[Hub]:
    async with serving(Hub(mock, queue_size=8, backoff=FAST_BACKOFF)) as started:
        yield started


@pytest.mark.asyncio
async def test_every_subscriber_gets_every_update_in_order(hub: Hub, mock: MockExchange) -> None:
    async with hub.subscribe(ACCOUNT) as a, hub.subscribe(ACCOUNT) as b, hub.subscribe(ACCOUNT) as c:
        sent = [account(n) for n in range(20)]
        received: dict[str, list[pb.Account]] = {"a": [], "b": [], "c": []}
        for batch in (sent[:8], sent[8:16], sent[16:]):
            for update in batch:
                mock.trigger_account_update(update)
            for name, sub in (("a", a), ("b", b), ("c", c)):
                while sub.queued:
                    received[name].append(await sub.next())  # type: ignore[arg-type]
        for name, got in received.items():
            assert got == sent, f"subscriber {name}: expected the 20 updates in order, got {len(got)}"


@pytest.mark.asyncio
async def test_one_upstream_subscription_per_topic_however_many_subscribers(
    hub: Hub, mock: MockExchange
) -> None:
    subs = [hub.subscribe(ACCOUNT) for _ in range(10)] + [hub.subscribe(POSITIONS) for _ in range(10)]
    for sub in subs:
        await sub.__aenter__()
    try:
        assert hub.subscriber_count(ACCOUNT) == 10 and hub.subscriber_count(POSITIONS) == 10
        assert (mock.account_streams, mock.position_streams) == (1, 1), (
            f"expected one upstream stream per topic, got {(mock.account_streams, mock.position_streams)}"
        )
        assert hub.upstream_subscriptions == {ACCOUNT: 1, POSITIONS: 1}
        assert mock.connections == 1, f"expected one connection, got {mock.connections}"
    finally:
        for sub in subs:
            await sub.__aexit__(None, None, None)


@pytest.mark.asyncio
async def test_overflow_drops_only_the_slow_subscriber(hub: Hub, mock: MockExchange) -> None:
    async with hub.subscribe(ACCOUNT) as fast, hub.subscribe(ACCOUNT) as slow:
        got = []
        for n in range(20):
            mock.trigger_account_update(account(n))  # never waits, whoever is behind
            got.append(await fast.next())
        assert got == [account(n) for n in range(20)], "the reading subscriber must get every update in order"
        assert hub.subscriber_count(ACCOUNT) == 1, "the slow subscriber must be removed at once"
        assert hub.stats[ACCOUNT].dropped == 1, f"expected 1 drop counted, got {hub.stats[ACCOUNT].dropped}"
        assert slow.queued == 0, f"expected the dropped queue freed, got {slow.queued} items"
        with pytest.raises(SubscriptionEnded) as ended:
            await slow.next()
        assert ended.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, f"got {ended.value.code}"
        assert "fell more than 8" in ended.value.details, ended.value.details


@pytest.mark.asyncio
async def test_overflow_is_logged(hub: Hub, mock: MockExchange, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="implementation")
    async with hub.subscribe(ACCOUNT, peer="ipv4:127.0.0.1:1234"):
        for n in range(9):
            mock.trigger_account_update(account(n))
    dropped = [r for r in caplog.records if getattr(r, "event", None) == "subscriber_dropped"]
    assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING, f"got {dropped}"
    assert dropped[0].fields["peer"] == "ipv4:127.0.0.1:1234"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_unsubscribe_on_exception(hub: Hub) -> None:
    with pytest.raises(RuntimeError, match="handler failed"):
        async with hub.subscribe(ACCOUNT):
            assert hub.subscriber_count(ACCOUNT) == 1
            raise RuntimeError("handler failed")
    assert hub.subscriber_count(ACCOUNT) == 0, "an exception inside the block must remove the subscription"


@pytest.mark.asyncio
async def test_unsubscribe_on_cancellation(hub: Hub) -> None:
    entered = asyncio.Event()

    async def consume() -> None:
        async with hub.subscribe(POSITIONS, symbol="BTCUSDT") as sub:
            entered.set()
            async for _ in sub:
                pass

    task = asyncio.create_task(consume())
    await entered.wait()
    assert hub.subscriber_count(POSITIONS) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.subscriber_count(POSITIONS) == 0, "a cancelled consumer must be removed"


@pytest.mark.asyncio
async def test_position_filter_is_exact(hub: Hub, mock: MockExchange) -> None:
    async with (
        hub.subscribe(POSITIONS, symbol="BTCUSDT") as btc,
        hub.subscribe(POSITIONS, symbol="BTC") as prefix,
        hub.subscribe(POSITIONS) as everything,
    ):
        for symbol in ("BTCUSDT", "BTC", "BTCUSDTPERP", "ETHUSDT", "BTCUSDT"):
            mock.trigger_position_update(position(symbol))
        assert [(await btc.next()).symbol for _ in range(btc.queued)] == ["BTCUSDT", "BTCUSDT"]  # type: ignore[union-attr]
        assert [(await prefix.next()).symbol for _ in range(prefix.queued)] == ["BTC"]  # type: ignore[union-attr]
        assert everything.queued == 5, f"the unfiltered subscriber must get all 5, got {everything.queued}"


@pytest.mark.asyncio
async def test_invalid_update_is_dropped_and_logged(
    hub: Hub, mock: MockExchange, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="implementation")
    async with hub.subscribe(ACCOUNT) as sub, hub.subscribe(POSITIONS) as positions:
        mock.trigger_account_update(account(1))
        mock.trigger_account_update(spec_account(equity="1e-05"))
        mock.trigger_position_update(position("BTCUSDT", mark="NaN"))
        mock.trigger_account_update(account(2))
        assert [await sub.next() for _ in range(sub.queued)] == [account(1), account(2)]
        assert positions.queued == 0, "an invalid position must not be queued"
    assert hub.stats[ACCOUNT].invalid == 1 and hub.stats[POSITIONS].invalid == 1
    errors = [r for r in caplog.records if getattr(r, "event", None) == "upstream_invalid_data"]
    assert [r.levelno for r in errors] == [logging.ERROR, logging.ERROR], f"got {errors}"
    assert "1e-05" in errors[0].fields["reason"], errors[0].fields  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_upstream_failure_ends_subscribers_then_recovers(mock: MockExchange) -> None:
    serving = Recorder()
    hub = Hub(mock, backoff=FAST_BACKOFF, on_serving=serving)
    await hub.start()
    try:
        await hub.wait_serving(2.0)
        async with hub.subscribe(ACCOUNT) as sub:
            mock.trigger_account_update(account(1))
            mock.fail_with(ExchangeUnavailable("exchange went away"))
            assert await sub.next() == account(1), "updates queued before the failure are still delivered"
            with pytest.raises(SubscriptionEnded) as ended:
                await asyncio.wait_for(sub.next(), 2.0)
        assert ended.value.code is grpc.StatusCode.UNAVAILABLE
        assert "exchange went away" in ended.value.details, ended.value.details
        assert not hub.serving and hub.upstream_connections == 0
        with pytest.raises(SubscriptionEnded, match="UNAVAILABLE: upstream exchange unavailable"):
            async with hub.subscribe(ACCOUNT):
                pass
        await asyncio.sleep(0.1)  # a few probes fail meanwhile
        mock.fail_with(None)
        await hub.wait_serving(2.0)
        assert serving.states == [True, False, True], f"got {serving.states}"
        assert hub.upstream_reconnects == 1 and hub.upstream_connections == 1
        assert mock.connections == 1, "recovery reopens the subscriptions, not the connection"
        async with hub.subscribe(ACCOUNT) as again:
            mock.trigger_account_update(account(2))
            assert await again.next() == account(2)
    finally:
        await hub.stop()


@pytest.mark.asyncio
async def test_connect_is_retried_until_the_exchange_answers(mock: MockExchange) -> None:
    mock.fail_with(ExchangeUnavailable("not yet"))
    hub = Hub(mock, backoff=FAST_BACKOFF)
    await hub.start()
    try:
        with pytest.raises(TimeoutError, match="not yet"):
            await hub.wait_serving(0.2)
        assert mock.calls["connect"] >= 2, f"expected connect() retried, got {mock.calls['connect']} call(s)"
        mock.fail_with(None)
        await hub.wait_serving(2.0)
        assert mock.connections == 1
    finally:
        await hub.stop()


@pytest.mark.asyncio
async def test_close_subscribers_delivers_queued_updates_then_ends(hub: Hub, mock: MockExchange) -> None:
    async with hub.subscribe(ACCOUNT) as sub:
        mock.trigger_account_update(account(1))
        hub.close_subscribers("shutting down")
        assert await sub.next() == account(1)
        with pytest.raises(SubscriptionEnded, match="UNAVAILABLE: shutting down"):
            await sub.next()
    with pytest.raises(SubscriptionEnded, match="shutting down"):
        async with hub.subscribe(ACCOUNT):
            pass


@pytest.mark.asyncio
async def test_stop_closes_the_exchange_once(mock: MockExchange) -> None:
    hub = Hub(mock)
    await hub.start()
    await hub.wait_serving(2.0)
    await hub.stop()
    await hub.stop()
    assert mock.closed and mock.calls["close"] == 1, f"got closed={mock.closed}, calls={mock.calls['close']}"
    assert hub.upstream_subscriptions == {ACCOUNT: 0, POSITIONS: 0}


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="queue_size must be >= 1, got 0"):
        Hub(MockExchange(), queue_size=0)


def test_unknown_topic_is_refused() -> None:
    with pytest.raises(ValueError, match="topic 'orders' is not one of account, positions"):
        Hub(MockExchange()).subscribe("orders")


@pytest.mark.asyncio
async def test_current_account_follows_the_stream_and_is_forgotten_when_in_doubt(
    hub: Hub, mock: MockExchange
) -> None:
    assert hub.current_account() is None, "no view before the exchange said anything"
    hub.offer_account(account(1))
    assert hub.current_account() == account(1), "an answer fills an empty view"
    mock.trigger_account_update(account(2))
    assert hub.current_account() == account(2), "the stream's update is the current view"
    hub.offer_account(account(1))
    assert hub.current_account() == account(2), "an answer never replaces the stream's newer view"
    mock.trigger_account_update(spec_account(equity="1e-05"))
    assert hub.current_account() is None, "after an invalid update the view is forgotten"


@pytest.mark.asyncio
async def test_current_account_is_forgotten_when_the_upstream_is_lost(mock: MockExchange) -> None:
    hub = Hub(mock, queue_size=8, backoff=FAST_BACKOFF)
    await hub.start()
    try:
        await hub.wait_serving(2.0)
        mock.trigger_account_update(account(3))
        assert hub.current_account() == account(3)
        mock.fail_with(ExchangeUnavailable("exchange went away"))
        for _ in range(100):
            if not hub.serving:
                break
            await asyncio.sleep(0.01)
        assert not hub.serving
        assert hub.current_account() is None, "a lost upstream leaves no view to serve"
        hub.offer_account(account(4))
        assert hub.current_account() is None, "nothing is kept while not serving"
    finally:
        mock.fail_with(None)
        await hub.stop()
