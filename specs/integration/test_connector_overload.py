"""§4.2 extensions: overload sheds rather than rots (rule C38).

The exchange sends 1,000 account updates a second, each stamped with the time it writes it,
to more subscribers than the connector can serve on this machine: plain grpcio clients that read
as fast as they can, whose transports take in all they are sent, so the connector never sees them
as slow readers, only its own upstream read falling behind. They run in a process of their own
(specs/integration/load_subscribers.py), with a few probe subscribers whose small receive windows
make the age of what they receive the age of what the connector sends. Meanwhile the suite asks
GetAccount ten times a second. Pass: no probe receives an update older than 2 s, no GetAccount
answers OK with an account older than 2 s, and updates keep flowing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc
import pytest

from harness.fixtures import MetricRecorder
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.connector_program import Connector, direct_connector_fixture, stamped_account  # noqa: F401 - fixtures

RATE = 1000
MAX_DELIVERED_AGE_S = 2.0  # rule C38
MAX_ANSWERED_AGE_S = 2.0  # rule C38
PROBES = 5
MIN_SERVED_SHARE = 2.0  # updates received, in subscribers' worth of the whole run: the flow goes on


def _age(account: pb.Account) -> float:
    return time.time() - (account.updated_at.seconds + account.updated_at.nanos * 1e-9)


async def _trigger(connector: Connector, seconds: float) -> int:
    sent, started = 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < int(elapsed * RATE):
            connector.mock.trigger_account_update(stamped_account(sent))
            sent += 1
        await asyncio.sleep(0.005)
    return sent


async def _poll_get_account(connector: Connector, seconds: float) -> tuple[float, int, int]:
    """(oldest account answered OK, OK answers, UNAVAILABLE answers) over `seconds`."""
    stub = connector.stub()
    oldest, ok, refused = 0.0, 0, 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            account = await stub.GetAccount(pb.GetAccountRequest(), timeout=3.0)
            oldest, ok = max(oldest, _age(account)), ok + 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            refused += 1
        await asyncio.sleep(0.1)
    return oldest, ok, refused


async def _overload(
    connector: Connector, metrics: MetricRecorder, scenario: str, subscribers: int, seconds: float
) -> None:
    connector.mock.trigger_account_update(stamped_account(0))
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "specs.integration.load_subscribers", connector.address, str(seconds + 4.0),
        str(PROBES), str(subscribers - PROBES), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await connector.wait_metric("subscribers", {"topic": "account"}, subscribers * 0.8, 15.0)
        sent, (oldest_answer, answered, refused) = await asyncio.gather(
            _trigger(connector, seconds), _poll_get_account(connector, seconds)
        )
        out, _ = await asyncio.wait_for(worker.communicate(), seconds + 30.0)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    dropped = await connector.metric("subscribers_dropped_total", {"topic": "account"})
    metrics.record("overload_delivered_age_max_s", report["age_max_s"], "s")
    metrics.record("overload_delivered_age_p99_s", report["age_p99_s"], "s")
    metrics.record("overload_answered_age_max_s", oldest_answer, "s")
    metrics.record("overload_messages_delivered", report["messages"], "messages")
    summary = (
        f"{report['messages']} updates delivered of {sent} sent to {subscribers} subscribers, probes' age p50 "
        f"{report['age_p50_s']:.2f} s, p99 {report['age_p99_s']:.2f} s, max {report['age_max_s']:.2f} s; "
        f"streams ended {report['ended']}; dropped {dropped}; GetAccount {answered} OK (oldest "
        f"{oldest_answer:.2f} s), {refused} UNAVAILABLE"
    )
    assert report["age_max_s"] <= MAX_DELIVERED_AGE_S, (
        f"[{scenario}] (rule C38): expected no probe subscriber to receive an update older than "
        f"{MAX_DELIVERED_AGE_S:g} s under overload, got {summary}"
    )
    assert oldest_answer <= MAX_ANSWERED_AGE_S, (
        f"[{scenario}] (rule C38): expected GetAccount never to answer OK with an account older than "
        f"{MAX_ANSWERED_AGE_S:g} s under overload, got {summary}"
    )
    assert report["messages"] >= MIN_SERVED_SHARE * sent, (
        f"[{scenario}] (rule C38): expected updates to keep flowing under overload (at least "
        f"{MIN_SERVED_SHARE:g} subscribers' worth), got {summary}"
    )


@pytest.mark.scenario("4.2.1.x27")
@pytest.mark.integration
@pytest.mark.requires("metrics")
@pytest.mark.timeout(90)
@pytest.mark.asyncio
async def test_overload_sheds_rather_than_rots(direct_connector: Connector, metrics: MetricRecorder) -> None:
    await _overload(direct_connector, metrics, "4.2.1.x27", subscribers=60, seconds=8.0)


@pytest.mark.perf_long
@pytest.mark.scenario("4.2.1.x28")
@pytest.mark.perf
@pytest.mark.requires("metrics")
@pytest.mark.timeout(240)
@pytest.mark.asyncio
async def test_overload_of_200_subscribers_at_1000_per_second(
    direct_connector: Connector, metrics: MetricRecorder
) -> None:
    await _overload(direct_connector, metrics, "4.2.1.x28", subscribers=200, seconds=60.0)
