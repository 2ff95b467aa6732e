"""§4.2 extension: a stall of the connector itself drops no reader (rule C40).

Two plain grpcio clients read the account stream as fast as they can while the exchange sends 200
updates a second. Midway the exchange sends a burst of 800 and, while the connector is still writing
it, the connector's process group is stopped for 1.5 s (SIGSTOP, then SIGCONT): what a virtual
machine whose CPU is taken away, or a host that runs something else, does. Every update queued
before the stall then looks older than the 1 s lag bound of rule C34, though no reader was slow.
Pass: both readers receive every update, in order, and nobody is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from harness.fixtures import MetricRecorder
from harness.outcomes import TimingMiss
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.connector_program import (  # noqa: F401 - fixtures
    Connector,
    direct_connector_fixture,
    drained,
    read_all,
    stamped_account,
    trigger_updates,
)
from specs.sequences import sequence_problem

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("metrics"),
    pytest.mark.timeout(60),
    pytest.mark.asyncio,
]
RATE = 200  # updates a second
READERS = 2
PAUSE_S = 1.5  # past the 1 s lag bound of rule C34
BEFORE_S, AFTER_S = 1.0, 2.0
BURST = 800  # under the 1,024-update queue bound of rule C13
# readers whose transports take about 1 KB ahead of them: what the connector has not yet written
# waits in the connector, where its stall ages it
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
BURST_SEEN = BURST // 4  # the stop comes once the readers have this much of it


@pytest.mark.scenario("4.2.1.x30")
async def test_a_stall_of_the_connector_drops_no_reader(
    direct_connector: Connector, metrics: MetricRecorder
) -> None:
    connector = direct_connector
    calls = [
        connector.stub(connector.channel(SMALL_WINDOW)).SubscribeAccount(pb.SubscribeAccountRequest())
        for _ in range(READERS)
    ]
    for call in calls:
        await call.initial_metadata()
    got: list[list[pb.Account]] = [[] for _ in calls]
    progressed = [asyncio.Event() for _ in calls]
    readers = [asyncio.create_task(read_all(call, got[i], progressed[i])) for i, call in enumerate(calls)]
    sent: list[pb.Account] = []
    stop = asyncio.Event()
    trigger = asyncio.create_task(trigger_updates(connector, RATE, sent, stop))
    try:
        await asyncio.sleep(BEFORE_S)
        # a burst the connector has read but not yet written when it stops: updates queued for the
        # readers, older than the lag bound once it runs again
        seen = len(sent) + BURST_SEEN
        for _ in range(BURST):
            update = stamped_account(len(sent))
            connector.mock.trigger_account_update(update)
            sent.append(update)
        await _until(lambda: min(len(updates) for updates in got) >= seen, 10.0)
        with connector.program.paused():
            await asyncio.sleep(PAUSE_S)
        await asyncio.sleep(AFTER_S)
    finally:
        stop.set()
        await trigger
        for i, reader in enumerate(readers):
            if not reader.done():
                await drained(got[i], sent, progressed[i])
        ended = [reader.result().name if reader.done() else "still open" for reader in readers]
        for call in calls:
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    dropped = await connector.metric("subscribers_dropped_total", {"topic": "account"}) or 0
    metrics.record("stall_readers_dropped", dropped, "subscribers")
    expected = [m.total_balance for m in sent]
    received = [len(g) for g in got]
    outcome = f"got {received} (streams: {ended}), exchange_connector_subscribers_dropped_total {dropped:g}"
    for client, updates in enumerate(got, start=1):
        # what arrived is an in-order prefix, whatever the host: a gap or a reordering is plainly the
        # connector's
        numbers = [m.total_balance for m in updates]
        problem = sequence_problem(expected[: len(numbers)], numbers)
        assert problem is None, (
            f"expected reading client {client} to receive the updates in order with no gap across a "
            f"{PAUSE_S:g} s stall of the connector's process: {problem}; {outcome}"
        )
    if dropped or any(len(updates) < len(expected) for updates in got):
        # a reader dropped for lag: on a host that starved the connector of CPU besides the stall, its
        # updates may really have waited past the lag bound (harness.timing judges the host)
        raise TimingMiss(
            f"expected each of {READERS} reading clients to receive all {len(sent)} updates across a "
            f"{PAUSE_S:g} s stall of the connector's process (SIGSTOP, then SIGCONT), with none dropped; {outcome}"
        )


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    """Return once `condition()` holds (looked at every millisecond), or after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.001)
