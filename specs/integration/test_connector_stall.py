"""§4.2 extension: a stall of the connector itself drops no reader (rule C40).

Two plain grpcio clients read the account stream while the exchange sends 200 updates a second.
Midway they stop reading and the exchange sends a burst of 400; once the connector has read part of
it (its GetAccount shows a later update than the readers hold), so that it holds updates for them,
its process group is stopped for 1.5 s (SIGSTOP, then SIGCONT): what a virtual machine whose CPU is
taken away, or a host that runs something else, does. The readers read again from the moment of
the stop. Every update the connector held for them then looks older than the 1 s lag bound of
rule C34, though no reader was slow. Pass: both readers receive every update, in order, and nobody
is dropped.

A drop is plainly the connector's when the reader could not have been owed anything older than the
lag bound, not counting the stall: from the send of the oldest update it lacked when it stopped
reading to the end of its stream, less the stall, under 1 s. Any other drop may be a starved
host's (a TimingMiss).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest

from harness.fixtures import MetricRecorder
from harness.outcomes import TimingMiss
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.connector_program import (  # noqa: F401 - fixtures
    Connector,
    direct_connector_fixture,
    drained,
    get_account,
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
SUBSCRIBER_MAX_LAG_S = 1.0  # rule C34
BEFORE_S, AFTER_S = 1.0, 2.0
# what arrives during the stop adds to it: under the 1,024-update queue bound of rule C13
BURST = 400
HELD = 100  # the stop comes once the connector has read this many updates past the readers
READ_WITHIN_S = 10.0
# readers whose transports take about 1 KB ahead of them: what the connector has not yet written
# waits in the connector, where its stall ages it
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]


@dataclass
class Reader:
    """One reading client's updates, and the wall-clock time its stream ended."""

    got: list[pb.Account]
    progressed: asyncio.Event
    ended_at: float | None = None
    lacking_at_hold: int = 0  # how many it had received when the readers stopped


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
    readers = [Reader([], asyncio.Event()) for _ in calls]
    reading = asyncio.Event()
    reading.set()
    tasks = [
        asyncio.create_task(_read_while(reading, call, reader))
        for call, reader in zip(calls, readers, strict=True)
    ]
    sent: list[pb.Account] = []
    stop = asyncio.Event()
    trigger = asyncio.create_task(trigger_updates(connector, RATE, sent, stop))
    try:
        await asyncio.sleep(BEFORE_S)
        # the readers stop, so what the connector reads next waits in the connector for them, where
        # the stall ages it
        reading.clear()
        for reader in readers:
            reader.lacking_at_hold = len(reader.got)
        wanted = len(sent) + HELD
        for _ in range(BURST):
            update = stamped_account(len(sent))
            connector.mock.trigger_account_update(update)
            sent.append(update)
        if not await _until_read(connector, wanted, READ_WITHIN_S):
            raise TimingMiss(
                f"expected the connector to read account update {wanted} of a burst within "
                f"{READ_WITHIN_S:g} s (its GetAccount showing it), before stopping it"
            )
        with connector.program.paused():
            reading.set()
            await asyncio.sleep(PAUSE_S)
        await asyncio.sleep(AFTER_S)
    finally:
        reading.set()
        stop.set()
        await trigger
        for task, reader in zip(tasks, readers, strict=True):
            if not task.done():
                await drained(reader.got, sent, reader.progressed)
        ended = [task.result().name if task.done() else "still open" for task in tasks]
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    dropped = await connector.metric("subscribers_dropped_total", {"topic": "account"}) or 0
    metrics.record("stall_readers_dropped", dropped, "subscribers")
    expected = [m.total_balance for m in sent]
    outcome = (
        f"got {[len(r.got) for r in readers]} (streams: {ended}), "
        f"exchange_connector_subscribers_dropped_total {dropped:g}"
    )
    for client, reader in enumerate(readers, start=1):
        # what arrived is an in-order prefix, whatever the host: a gap or a reordering is plainly the
        # connector's
        numbers = [m.total_balance for m in reader.got]
        problem = sequence_problem(expected[: len(numbers)], numbers)
        assert problem is None, (
            f"expected reading client {client} to receive the updates in order with no gap across a "
            f"{PAUSE_S:g} s stall of the connector's process: {problem}; {outcome}"
        )
    for client, (reader, code) in enumerate(zip(readers, ended, strict=True), start=1):
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED.name or reader.ended_at is None:
            continue
        owed = _most_owed(reader, sent)
        assert owed >= SUBSCRIBER_MAX_LAG_S, (
            f"expected no reading client dropped for the connector's own {PAUSE_S:g} s stall (rules "
            f"C40, C34), got client {client} dropped though, not counting the stall, nothing it lacked "
            f"was older than {owed:.2f} s when its stream ended (bound {SUBSCRIBER_MAX_LAG_S:g} s); {outcome}"
        )
    if dropped or any(len(r.got) < len(expected) for r in readers):
        # a reader dropped for lag past the stall: on a host that starved the connector of CPU
        # besides the stall, its updates may really have waited past the lag bound
        raise TimingMiss(
            f"expected each of {READERS} reading clients to receive all {len(sent)} updates across a "
            f"{PAUSE_S:g} s stall of the connector's process (SIGSTOP, then SIGCONT), with none dropped; {outcome}"
        )


def _most_owed(reader: Reader, sent: list[pb.Account]) -> float:
    """At most how long, not counting the stall, the connector could have held an update for
    `reader` when its stream ended: from the send of the oldest update it lacked when it stopped
    reading, less the stall (the updates are stamped before they are sent)."""
    if reader.lacking_at_hold >= len(sent) or reader.ended_at is None:
        return 0.0
    oldest = sent[reader.lacking_at_hold].updated_at
    return reader.ended_at - (oldest.seconds + oldest.nanos * 1e-9) - PAUSE_S


async def _read_while(reading: asyncio.Event, call: Any, reader: Reader) -> grpc.StatusCode:
    """Every update of `call` into `reader`, read only while `reading` is set; the stream's status."""
    code = grpc.StatusCode.OK
    try:
        while await reading.wait() and (message := await call.read()) is not grpc.aio.EOF:
            reader.got.append(cast(pb.Account, message))
            reader.progressed.set()
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    reader.ended_at = time.time()
    return code


async def _until_read(connector: Connector, number: int, timeout: float) -> bool:
    """Whether the connector's GetAccount shows update `number` or a later one within `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        account, _ = await get_account(connector.stub())
        if account is not None and int(float(account.total_balance)) - 10000 >= number:
            return True
        await asyncio.sleep(0.005)
    return False
