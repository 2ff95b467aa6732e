"""§4.2 extension: a burst of GetPositions for one symbol costs the exchange one call (rule C37)."""

from __future__ import annotations

import asyncio

import pytest

from harness.fixtures import MetricRecorder
from harness.sut.connector import ConnectorUnderTest
from harness.sut.manifest import Manifest
from opensqt.exchange.v1 import exchange_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(60)]

CLIENTS = 20
HELD_FOR_S = 1.0  # the mock holds the upstream call this long before the suite counts


@pytest.mark.scenario("4.2.1.x26")
async def test_concurrent_get_positions_for_one_symbol_share_one_upstream_call(
    connector: ConnectorUnderTest, metrics: MetricRecorder, sut: Manifest
) -> None:
    mock_exchange = connector.mock
    before = mock_exchange.calls["GetPositions"]
    counted = sut.has_capability("metrics")
    shared_before = await connector.required_metric("get_positions_shared_total") if counted else 0.0
    mock_exchange.stall_calls(True)  # the exchange holds every GetPositions: the burst overlaps for sure
    stub = connector.stub()
    try:
        calls = [
            stub.GetPositions(pb.GetPositionsRequest(symbol="BTCUSDT"), timeout=15.0) for _ in range(CLIENTS)
        ]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(mock_exchange.wait_until, lambda m: m.calls["GetPositions"] > before, 5.0)
        await asyncio.sleep(HELD_FOR_S)
        upstream = mock_exchange.calls["GetPositions"] - before
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    finally:
        mock_exchange.stall_calls(False)
    metrics.record("get_positions_upstream_calls_per_burst", upstream, "calls")
    assert upstream == 1, (
        f"expected {CLIENTS} concurrent GetPositions for BTCUSDT to cost the exchange "
        f"one call, got {upstream}"
    )
    if counted:
        await _check_counters(connector, shared_before)


async def _check_counters(connector: ConnectorUnderTest, shared_before: float) -> None:
    """The counters that show C37 at work in production: every call made, every caller that shared one."""
    mock_exchange = connector.mock
    made = await connector.required_metric("upstream_get_positions_calls_total")
    shared = await connector.required_metric("get_positions_shared_total") - shared_before
    received = mock_exchange.calls["GetPositions"]
    assert made == received, (
        f"under rule C37, expected exchange_connector_upstream_get_positions_calls_total to count every GetPositions the "
        f"connector made, {received} as the exchange received them, got {made:g}"
    )
    assert shared == CLIENTS - 1, (
        f"under rule C37, expected exchange_connector_get_positions_shared_total to count the {CLIENTS - 1} callers "
        f"that shared the call in flight, got {shared:g}"
    )
    if connector.fresh:
        assert shared_before == 0, (
            f"under rule C37, expected exchange_connector_get_positions_shared_total to read 0 before any GetPositions, "
            f"got {shared_before:g}"
        )
