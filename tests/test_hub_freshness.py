"""The hub's freshness machinery over the in-process MockExchange: the liveness read of a quiet
upstream, a hung upstream given up, slow subscribers dropped by lag, overload shedding."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import grpc
import pytest
import pytest_asyncio

from implementation.adapters.mock import MockExchange
from implementation.connector_core.freshness import FreshnessPolicy
from implementation.connector_core.hub import ACCOUNT, OVERLOAD_COOLDOWN_FACTOR, Hub, SubscriptionEnded
from implementation.connector_core.stall import STALL_AFTER_S
from implementation.contract.backoff import ReconnectPolicy
from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from tests.conftest import serving

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]
FAST_BACKOFF = ReconnectPolicy(initial_backoff=0.01, max_backoff=0.05, jitter=0.0)
POLICY = FreshnessPolicy(max_age=1.0, probe_after=0.2, subscriber_max_lag=0.3)


class Health:
    def __init__(self) -> None:
        self.states: list[bool] = []
        self._changed = asyncio.Event()

    async def __call__(self, healthy: bool) -> None:
        self.states.append(healthy)
        self._changed.set()

    async def until(self, healthy: bool, timeout: float) -> None:
        async def wait() -> None:
            while not self.states or self.states[-1] is not healthy:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)


@pytest_asyncio.fixture
async def health() -> Health:
    return Health()


@pytest_asyncio.fixture
async def hub(mock: MockExchange, health: Health) -> AsyncIterator[Hub]:
    async with serving(Hub(mock, backoff=FAST_BACKOFF, freshness=POLICY, on_serving=health)) as started:
        yield started


async def test_a_quiet_upstream_is_asked_and_stays_fresh(
    hub: Hub, mock: MockExchange, health: Health
) -> None:
    await asyncio.sleep(POLICY.max_age * 2.5)
    assert hub.probes >= 2 and mock.calls["get_account"] >= 2
    assert hub.healthy and hub.stale_reason() is None and health.states == [True]
    assert hub.data_age() < POLICY.max_age


async def test_a_hung_upstream_is_given_up_within_the_bound(
    hub: Hub, mock: MockExchange, health: Health
) -> None:
    mock.hold_calls()  # the liveness read is never answered, and no update comes
    started = time.monotonic()
    await health.until(False, POLICY.max_age * 3)
    assert not hub.serving and time.monotonic() - started <= POLICY.max_age + POLICY.tick * 4
    assert hub.hung_upstreams == 1 and health.states[-1] is False
    assert "no sign of life" in (hub.stale_reason() or "")
    mock.release_calls()
    await hub.wait_serving(5.0)
    assert hub.stale_reason() is None and health.states[-1] is True


async def test_a_subscriber_left_waiting_past_the_lag_bound_is_dropped(hub: Hub, mock: MockExchange) -> None:
    async with hub.subscribe(ACCOUNT) as slow:
        mock.trigger_account_update(spec_account())
        await asyncio.sleep(0)
        assert slow.queued == 1
        await asyncio.sleep(POLICY.subscriber_max_lag + POLICY.tick * 2)  # never read: the watchdog drops it
        with pytest.raises(SubscriptionEnded) as ended:
            await slow.next()
    assert ended.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "bound 0.3 s" in ended.value.details
    assert hub.stats[ACCOUNT].dropped == 1


async def test_overload_sheds_the_laggiest_quarter_and_refuses_new_subscribers(hub: Hub) -> None:
    async with contextlib.AsyncExitStack() as subscribed:
        for _ in range(8):
            await subscribed.enter_async_context(hub.subscribe(ACCOUNT))
        assert hub.shed() == 2 and hub.subscriber_count(ACCOUNT) == 6
        with pytest.raises(SubscriptionEnded, match="overloaded"):
            async with hub.subscribe(ACCOUNT):
                pass


async def test_after_a_shed_new_subscribers_wait_out_a_cool_down(hub: Hub) -> None:
    async with contextlib.AsyncExitStack() as subscribed:
        for _ in range(4):
            await subscribed.enter_async_context(hub.subscribe(ACCOUNT))
        assert hub.shed() == 1  # the clients just shed come straight back
        with pytest.raises(SubscriptionEnded, match="admits new ones again in") as refused:
            async with hub.subscribe(ACCOUNT):
                pass
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(OVERLOAD_COOLDOWN_FACTOR * POLICY.subscriber_max_lag + 0.05)
        async with hub.subscribe(ACCOUNT):
            assert hub.subscriber_count(ACCOUNT) == 4  # three kept, and the new one


async def test_a_stall_of_the_connectors_own_loop_drops_nobody(hub: Hub, mock: MockExchange) -> None:
    async with hub.subscribe(ACCOUNT) as reader:
        mock.trigger_account_update(spec_account())
        await asyncio.sleep(0)
        assert reader.queued == 1
        time.sleep(POLICY.subscriber_max_lag + STALL_AFTER_S + 0.2)  # noqa: ASYNC251 - the loop itself stalls
        mock.trigger_account_update(spec_account(total_balance="1.00"))
        await asyncio.sleep(0)
        await asyncio.sleep(POLICY.tick * 2)  # the watchdog runs too
        assert [cast(pb.Account, await reader.next()).total_balance for _ in range(2)] == ["10000.00", "1.00"]
    assert hub.stats[ACCOUNT].dropped == 0 and hub.loop_stalls.stalls == 1


async def test_overload_is_half_a_topics_subscribers_falling_ever_further_behind(
    hub: Hub, mock: MockExchange
) -> None:
    async with contextlib.AsyncExitStack() as subscribed:
        subs = [await subscribed.enter_async_context(hub.subscribe(ACCOUNT)) for _ in range(4)]
        mock.trigger_account_update(spec_account())
        await asyncio.sleep(0)
        later = time.monotonic() + POLICY.subscriber_max_lag * 0.75  # past half the bound
        assert all(sub.queued == 1 for sub in subs)
        reason = hub.overload(later)
        assert reason is not None and "4 of its 4 account subscribers" in reason
        for sub in subs[:3]:  # three of them catch up: their queues shrink
            await sub.next()
        assert hub.overload(later) is None


async def test_one_slow_reader_is_not_overload(hub: Hub, mock: MockExchange) -> None:
    async with contextlib.AsyncExitStack() as subscribed:
        slow, *readers = [await subscribed.enter_async_context(hub.subscribe(ACCOUNT)) for _ in range(4)]
        mock.trigger_account_update(spec_account())
        await asyncio.sleep(0)
        for reader in readers:
            await reader.next()
        assert slow.queued == 1
        assert hub.overload(time.monotonic() + POLICY.subscriber_max_lag * 0.75) is None


async def test_a_shed_drops_the_laggiest_quarter_of_those_behind(hub: Hub, mock: MockExchange) -> None:
    async with contextlib.AsyncExitStack() as subscribed:
        subs = [await subscribed.enter_async_context(hub.subscribe(ACCOUNT)) for _ in range(8)]
        mock.trigger_account_update(spec_account())
        await asyncio.sleep(0)
        for sub in subs[:7]:
            await sub.next()
        await asyncio.sleep(POLICY.subscriber_max_lag * 0.6)
        assert hub.shed() == 1 and subs[7].ended  # the one behind, not a quarter of everyone
        assert hub.subscriber_count(ACCOUNT) == 7


async def test_a_shed_keeps_only_the_subscribers_the_deliveries_can_serve(
    hub: Hub, mock: MockExchange
) -> None:
    async with contextlib.AsyncExitStack() as subscribed:
        readers = [await subscribed.enter_async_context(hub.subscribe(ACCOUNT)) for _ in range(2)]
        stuck = [await subscribed.enter_async_context(hub.subscribe(ACCOUNT)) for _ in range(6)]
        for n in range(10):
            mock.trigger_account_update(spec_account(total_balance=f"{n}.00"))
        await _within(lambda: sum(sub.queued for sub in stuck) == 60, 1.0, "the 10 updates queued for the 6")
        for reader in readers:
            for _ in range(10):
                await reader.next()
        # 20 of the 80 updates offered were taken: 70 % of a quarter of the demand serves 1 of
        # the 8, so the watchdog's first shed ends all 6 behind, not a quarter of everyone
        await _within(lambda: all(sub.ended for sub in stuck), POLICY.subscriber_max_lag, "the 6 behind shed")
        assert hub.shed_rounds == 1 and hub.stats[ACCOUNT].dropped == 6
        assert hub.subscriber_count(ACCOUNT) == 2 and not any(reader.ended for reader in readers)


async def _within(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {what} within {timeout} s")
        await asyncio.sleep(0.002)
