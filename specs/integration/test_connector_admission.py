"""§4.2 extension: a burst of new calls is admitted or refused with a contract status, and a call
the exchange answers CANCELLED is refused UNAVAILABLE (rule C39)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from harness.fixtures import MetricRecorder
from harness.sut.connector import ConnectorUnderTest
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.timeout(60),
    pytest.mark.requires("metrics"),
]

BURST = 3000  # new calls at once, as a fleet reconnecting after a restart
CHANNELS = 20
CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
SENT_SETTLE_S = 0.5
UPSTREAM_CANCELLED_TIMEOUT_S = 3.0  # the exchange answers at once
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.scenario("4.2.1.x29")
async def test_a_burst_of_calls_is_admitted_or_refused_with_a_contract_status(
    connector: ConnectorUnderTest, metrics: MetricRecorder
) -> None:
    # channels of their own (no shared subchannel): twenty clients, not one
    channels = [connector.channel([("grpc.use_local_subchannel_pool", 1)]) for _ in range(CHANNELS)]
    codes: Counter[grpc.StatusCode] = Counter()
    started = 0
    all_started = asyncio.Event()

    async def call(n: int) -> None:
        nonlocal started
        stub = pb_grpc.ExchangeServiceStub(channels[n % CHANNELS])
        started += 1
        if started == BURST:
            all_started.set()
        try:
            await stub.GetAccount(pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S)
            codes[grpc.StatusCode.OK] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code()] += 1

    await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), CONNECT_TIMEOUT_S) for c in channels))
    # The burst is sent while the connector is paused, so it is read all at once on resume: on a
    # slow or busy host a client cannot otherwise send faster than the connector takes calls.
    with connector.program.paused():
        calls = [asyncio.ensure_future(call(n)) for n in range(BURST)]
        await asyncio.wait_for(all_started.wait(), CALL_TIMEOUT_S)
        await asyncio.sleep(SENT_SETTLE_S)  # the last calls' frames leave the client
    await asyncio.gather(*calls)
    seen = {code.name: count for code, count in codes.items()}
    metrics.record("burst_calls_ok", codes[grpc.StatusCode.OK], "calls")
    assert set(codes) <= ALLOWED, (
        f"expected each of {BURST} calls arriving at once to be answered OK or refused "
        f"with UNAVAILABLE or RESOURCE_EXHAUSTED, got {seen}"
    )
    refused = BURST - codes[grpc.StatusCode.OK]
    counted = sum(
        [
            await connector.metric("calls_refused_total", {"reason": r}) or 0
            for r in ("overloaded", "shutting_down")
        ]
    )
    assert counted >= refused, (
        f"expected exchange_connector_calls_refused_total to count the {refused} "
        f"refused calls, got {counted} ({seen})"
    )


@pytest.mark.scenario("4.2.1.x29")
async def test_a_call_the_exchange_cancels_is_answered_unavailable(connector: ConnectorUnderTest) -> None:
    """Rule C39: CANCELLED is for a call its own client cancelled. A GetPositions the connector
    passes to its exchange, which answers CANCELLED, reaches the client as UNAVAILABLE."""
    stub = pb_grpc.ExchangeServiceStub(connector.channel())
    connector.mock.fail_calls(grpc.StatusCode.CANCELLED, "mock exchange: the call was cancelled")
    try:
        await stub.GetPositions(
            pb.GetPositionsRequest(symbol="BTCUSDT"),
            timeout=UPSTREAM_CANCELLED_TIMEOUT_S,
            metadata=connector.metadata,
        )
    except grpc.aio.AioRpcError as error:
        got = f"{error.code().name} {error.details()!r}"
        code = error.code()
    else:
        got, code = "OK", grpc.StatusCode.OK
    finally:
        connector.mock.fail_calls(None)
    assert code is grpc.StatusCode.UNAVAILABLE, (
        f"under rule C39, expected GetPositions whose upstream call the exchange answered CANCELLED "
        f"to get UNAVAILABLE, got {got}"
    )
