"""§4.2 extension 4.2.1.x35: the upstream lag of rule C30, measured by the exchange's stamps.

The updates keep flowing (one every FLOW_EVERY_S), so the data age stays small throughout: only the
lag can make the view stale. The mock exchange stamps each account as it writes it (stamp_on_send),
with nanoseconds: stamps that advance slower than real time fall ever further behind the read (a
growing lag), and stamps a constant offset ahead of or behind the connector's clock are no lag.
While the lag grows, exchange_connector_upstream_lag_seconds must report it (rule C32).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from harness.sut.connector import ConnectorFactory
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.connector_program import Connector, get_account, stamped_account

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(40)]

LAG_BOUND_S = 5.0  # rule C30
FLOW_EVERY_S = 0.2  # well within the 1 s of silence after which a connector may ask (C33)
FALLING_PACE = 0.01  # the stamps advance 10 ms a second: the lag grows 0.99 s a second
LAG_PAST_BOUND_S = LAG_BOUND_S / (1 - FALLING_PACE)  # when the growing lag passes the bound
STALE_WITHIN_S = LAG_PAST_BOUND_S + 3.0  # the watchdog's tick and the suite's polling
STALE_NOT_BEFORE_S = LAG_PAST_BOUND_S - 1.5  # sooner, it is not the lag that made it stale
REPEATED_FOR_S = LAG_PAST_BOUND_S + 1.5  # a repeated stamp counted as lag would pass the bound
CLOCK_OFFSET_S = 8.0  # past the bound: an offset taken for lag makes the view stale at once
OFFSET_FOR_S = LAG_BOUND_S + 1.5  # an offset taken for lag fails at once; a lag that creeps from it, by then
LAG_WORDS = ("lag", "behind", "late")
LAG_METRIC_EVERY_S = 0.5
LAG_METRIC_FROM_S = 2.5  # samples from then on (before the staleness) must show the lag growing
LAG_METRIC_SLACK_S = 1.0  # an update every FLOW_EVERY_S, the scrape's own time


@contextlib.asynccontextmanager
async def flowing(connector: Connector, same: pb.Account | None = None) -> AsyncIterator[None]:
    """Account updates every FLOW_EVERY_S while the block runs: `same` each time (sent again
    unchanged), or a new account each time."""

    async def feed() -> None:
        n = 0
        while True:
            n += 1
            connector.mock.trigger_account_update(same if same is not None else stamped_account(n))
            await asyncio.sleep(FLOW_EVERY_S)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def outcome_text(account: Any, outcome: Any) -> str:
    if account is not None:
        return "OK"
    return f"{outcome.code().name} ({outcome.details()!r})"


async def stays_serving(connector: Connector, seconds: float, what: str) -> None:
    """Health SERVING and GetAccount OK at every look for `seconds`, while the updates flow."""
    stub = connector.stub()
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        health = await connector.health()
        account, outcome = await get_account(stub)
        assert health == "SERVING" and account is not None, (
            f"under rule C30, expected health SERVING and GetAccount OK while {what}: that is no upstream "
            f"lag; got {health} and {outcome_text(account, outcome)} after {elapsed:.1f} s"
        )
        await asyncio.sleep(0.25)


async def read_until_ended(stream: Any, started: float) -> tuple[float, str]:
    """Read a SubscribeAccount stream to its end: (seconds after `started`, its status and details)."""
    try:
        async for _ in stream:
            pass
    except grpc.aio.AioRpcError as exc:
        return time.monotonic() - started, f"{exc.code().name} ({exc.details()!r})"
    return time.monotonic() - started, "OK (the stream ended)"


async def sample_lag_metric(connector: Connector, started: float, into: list[tuple[float, Any]]) -> None:
    """(seconds after `started`, exchange_connector_upstream_lag_seconds or None) every
    LAG_METRIC_EVERY_S until cancelled."""
    while True:
        into.append((time.monotonic() - started, await connector.metric("upstream_lag_seconds")))
        await asyncio.sleep(LAG_METRIC_EVERY_S)


def lag_metric_problem(samples: list[tuple[float, Any]], stale_after: float) -> str | None:
    """What is wrong with the upstream-lag metric's samples taken while the lag grew (before the view
    went stale), or None. The lag at t seconds is about (1 - FALLING_PACE) * t."""
    judged = [(t, v) for t, v in samples if LAG_METRIC_FROM_S <= t < stale_after - LAG_METRIC_EVERY_S]
    if not judged:
        return None  # too few samples to judge (a slow scrape): C30's checks still hold
    wrong = [
        (t, v)
        for t, v in judged
        if v is None or not (1 - FALLING_PACE) * t - LAG_METRIC_SLACK_S <= v <= t + LAG_METRIC_SLACK_S
    ]
    if not wrong:
        return None
    shown = ", ".join(
        f"after {t:.1f} s expected {(1 - FALLING_PACE) * t:.1f} s (within {LAG_METRIC_SLACK_S:g} s), "
        f"got {'no sample' if v is None else f'{v:.3f}'}"
        for t, v in wrong[:4]
    )
    return (
        f"under rule C32, expected exchange_connector_upstream_lag_seconds to report the upstream lag while it grows "
        f"(the exchange's stamps fall {1 - FALLING_PACE:.2f} s further behind the reads each second): {shown}"
    )


@pytest.mark.scenario("4.2.1.x35")
async def test_stamps_falling_behind_make_the_view_stale(connectors: ConnectorFactory) -> None:
    connector = await connectors.start()
    connector.mock.stamp_on_send(pace=FALLING_PACE)
    # a subscriber that takes every update at once: the growing lag is the exchange's, not its own
    stream = connector.stub().SubscribeAccount(pb.SubscribeAccountRequest())
    await stream.initial_metadata()
    started = time.monotonic()
    reader = asyncio.create_task(read_until_ended(stream, started))
    lag_samples: list[tuple[float, Any]] = []
    async with flowing(connector):
        sampler = asyncio.create_task(sample_lag_metric(connector, started, lag_samples))
        stale_after = await connector.wait_health("NOT_SERVING", STALE_WITHIN_S)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        # at the staleness a connector may end its streams (UNAVAILABLE); a drop for lag before it is C34's
        ended = reader.result() if reader.done() else None
        stream.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert stale_after is not None, (
            f"under rule C30, expected NOT_SERVING within {STALE_WITHIN_S:.1f} s while the exchange's stamps "
            f"fall {1 - FALLING_PACE:.2f} s further behind the reads each second (the lag passes "
            f"{LAG_BOUND_S:g} s after {LAG_PAST_BOUND_S:.1f} s; updates flow, so the data age stays small), "
            f"got {await connector.health()}"
        )
        account, outcome = await get_account(connector.stub())
    assert ended is None or not ended[1].startswith("RESOURCE_EXHAUSTED"), (
        f"under rule C34, expected a subscriber that reads every update at once to stay subscribed while "
        f"only the upstream lag grows (its 1 s lag bound counts from the connector's read, not the "
        f"upstream lag before it), got its stream ended {ended[1]} after {ended[0]:.1f} s"
    )
    assert stale_after >= STALE_NOT_BEFORE_S, (
        f"under rule C30, expected NOT_SERVING only once the lag passes {LAG_BOUND_S:g} s (after "
        f"{LAG_PAST_BOUND_S:.1f} s), got NOT_SERVING after {stale_after:.1f} s"
    )
    problem = lag_metric_problem(lag_samples, stale_after)
    assert problem is None, problem
    assert account is None and outcome.code() is grpc.StatusCode.UNAVAILABLE, (
        f"under rule C30, expected GetAccount UNAVAILABLE while the upstream lag is past {LAG_BOUND_S:g} s, "
        f"got {outcome_text(account, outcome)}"
    )
    details = outcome.details() or ""
    assert any(word in details for word in LAG_WORDS), (
        f"under rule C30, expected the UNAVAILABLE message to name the upstream lag (one of {LAG_WORDS}), "
        f"got {details!r}"
    )


@pytest.mark.scenario("4.2.1.x35")
async def test_an_account_sent_again_unchanged_is_no_lag(connectors: ConnectorFactory) -> None:
    connector = await connectors.start()
    # stamped once, then sent again and again with that stamp: its last change grows old
    async with flowing(connector, same=stamped_account(1)):
        await stays_serving(
            connector,
            REPEATED_FOR_S,
            f"the exchange sends one account again unchanged (its stamp {REPEATED_FOR_S:.1f} s old by the end)",
        )


@pytest.mark.scenario("4.2.1.x35")
@pytest.mark.parametrize("offset", [CLOCK_OFFSET_S, -CLOCK_OFFSET_S], ids=["ahead", "behind"])
async def test_a_constant_clock_offset_is_no_lag(connectors: ConnectorFactory, offset: float) -> None:
    connector = await connectors.start()
    connector.mock.stamp_on_send(offset=offset)
    side = "ahead of" if offset > 0 else "behind"
    async with flowing(connector):
        await stays_serving(
            connector,
            OFFSET_FOR_S,
            f"the exchange's stamps run a constant {abs(offset):g} s {side} the clock",
        )
