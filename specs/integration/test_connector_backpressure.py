"""§4.2 extensions: back-pressure against a real, slowly reading client (rule C34).

The slow client is a plain grpcio channel that reads one update every 50 ms while the exchange
sends 500 a second. Its channel turns HTTP/2 BDP probing off (a standard grpcio option), so its
own transport holds at most its initial window ahead of the application (about 100 KB, some 1,300
account updates): what a client's transport absorbs is the client's choice, and the connector
cannot see it; the rule bounds the lag the connector itself holds for a subscriber.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import grpc
import pytest

from harness.fixtures import MetricRecorder
from harness.outcomes import within
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.connector_program import (  # noqa: F401 - fixtures
    Connector,
    drained,
    freezable_mock_fixture,
    program_connector_fixture,
    read_all,
    trigger_updates,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("metrics"),
    pytest.mark.timeout(60),
    pytest.mark.asyncio,
]
RATE = 500  # updates a second
SLOW_READ_EVERY_S = 0.05
SLOW_CLIENT_OPTIONS = [("grpc.http2.bdp_probe", 0)]
SUBSCRIBER_MAX_LAG_S = 1.0  # rule C34
LAG_SLACK_S = 0.5  # the suite sees the drop through /metrics, polled
DROP_WITHIN_S = 12.0


def _stamp(account: pb.Account) -> float:
    return account.updated_at.seconds + account.updated_at.nanos * 1e-9


@pytest.mark.scenario("4.2.1.x23")
async def test_slowly_reading_client_is_dropped_within_the_lag_bound(
    program_connector: Connector, metrics: MetricRecorder
) -> None:
    connector = program_connector
    fast = connector.stub().SubscribeAccount(pb.SubscribeAccountRequest())
    slow = connector.stub(connector.channel(SLOW_CLIENT_OPTIONS)).SubscribeAccount(
        pb.SubscribeAccountRequest()
    )
    await fast.initial_metadata()
    await slow.initial_metadata()
    sent: list[pb.Account] = []
    fast_got: list[pb.Account] = []
    slow_got: list[pb.Account] = []
    stop = asyncio.Event()
    trigger = asyncio.create_task(trigger_updates(connector, RATE, sent, stop))
    fast_progressed = asyncio.Event()
    fast_reader = asyncio.create_task(read_all(fast, fast_got, fast_progressed))
    dropped_at: float | None = None
    newest_at_drop: pb.Account | None = None
    slow_code: grpc.StatusCode | None = None
    started = time.monotonic()
    try:
        while time.monotonic() - started < DROP_WITHIN_S:
            message = await slow.read()  # one update every 50 ms: slower than the 500 a second sent
            if message is grpc.aio.EOF:
                break
            slow_got.append(cast(pb.Account, message))
            if dropped_at is None and (
                await connector.metric("subscribers_dropped_total", {"topic": "account"}) or 0
            ):
                dropped_at, newest_at_drop = time.monotonic(), sent[-1]
                break
            await asyncio.sleep(SLOW_READ_EVERY_S)
        assert dropped_at is not None, (
            f"expected the connector to drop a client reading 1 update per "
            f"{SLOW_READ_EVERY_S * 1000:g} ms against {RATE}/s within {DROP_WITHIN_S:g} s, got no drop "
            f"(the client had read {len(slow_got)} of {len(sent)} updates)"
        )
        reading_lag = _stamp(newest_at_drop) - _stamp(slow_got[-1])  # type: ignore[arg-type]
        slow_code = await asyncio.wait_for(read_all(slow, slow_got), 20.0)  # what its transport holds
    finally:
        stop.set()
        await trigger
        if not fast_reader.done():  # on a busy host its last updates may still be on their way
            await drained(fast_got, sent, fast_progressed)
        fast_ended = fast_reader.result().name if fast_reader.done() else "still open"
        fast.cancel()
        await asyncio.gather(fast_reader, return_exceptions=True)
    assert slow_code is grpc.StatusCode.RESOURCE_EXHAUSTED, (
        f"expected the slow client's stream to end with RESOURCE_EXHAUSTED, got {slow_code}"
    )
    held = _stamp(newest_at_drop) - _stamp(slow_got[-1])  # type: ignore[arg-type]
    metrics.record("slow_client_lag_at_connector_s", held, "s")
    metrics.record("slow_client_reading_lag_at_drop_s", reading_lag, "s")
    within(
        held,
        SUBSCRIBER_MAX_LAG_S + LAG_SLACK_S,
        f"expected the slow client to be dropped once the connector held updates for it longer than "
        f"{SUBSCRIBER_MAX_LAG_S:g} s (+{LAG_SLACK_S:g} s to see it), got the last update it was given "
        f"{held:.2f} s older than the newest sent when the drop was seen",
    )
    numbers = [int(float(m.total_balance)) - 10000 for m in slow_got]
    assert numbers == list(range(len(numbers))), (
        "expected an in-order prefix of the updates before the status (no silent gap)"
    )
    assert [m.total_balance for m in fast_got] == [m.total_balance for m in sent], (
        f"expected the reading client to receive every update in order, got "
        f"{len(fast_got)} of {len(sent)} (its stream: {fast_ended})"
    )
