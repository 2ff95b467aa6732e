"""§6.1 scaling curve (-m perf only): how the connector's cost grows with its subscribers, beside the
bare relay baseline (harness/doubles/relay.py) measured in the same run.

Method (harness/perf/scaling.py): busy points of 1, 10, 100 and 1,000 subscribers, each receiving
PER_SUBSCRIBER_RATE updates/s for POINT_SECONDS (the target delivers N x rate per second); then an
idle point of 5,000 open, registered streams. Per point: deliveries/s, delivery p50/p99, the
server's CPU µs per delivery and its RSS per subscriber, for the relay and then the connector,
each fed by its own mock exchange. The figures are reported, not asserted (aim: CPU per delivery
flat from 10 to 1,000 subscribers). The sanity bound, asserted: no update lost at any busy point
and every idle stream registered, for both targets; otherwise the curve would describe a
different workload.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from harness.perf.fanout import MockExchangeSource
from harness.perf.fixtures import RelayBaseline
from harness.perf.results import PerfRecorder
from harness.perf.scaling import PointResult, busy_point, idle_point

pytestmark = [pytest.mark.perf, pytest.mark.perf_long]

BUSY_SUBSCRIBERS = (1, 10, 100, 1_000)
IDLE_STREAMS = 5_000
PER_SUBSCRIBER_RATE = 10.0  # updates/s each subscriber receives
POINT_SECONDS = 10.0


@pytest.mark.scenario("6.1.2.x2")
@pytest.mark.asyncio
@pytest.mark.timeout(1800)
async def test_scaling_curve_of_subscribers_against_the_relay_baseline(
    connector: Any, mock_exchange: Any, relay_baseline: RelayBaseline, perf: PerfRecorder
) -> None:
    targets = {
        "relay": (relay_baseline.address, MockExchangeSource(relay_baseline.mock), relay_baseline.pid),
        "connector": (connector.address, MockExchangeSource(mock_exchange), connector.pid),
    }
    points: list[dict[str, Any]] = []
    for subscribers in BUSY_SUBSCRIBERS:
        point: dict[str, Any] = {"subscribers": subscribers, "load_average": _load()}
        for name, (address, source, pid) in targets.items():
            result = await busy_point(address, source, pid, subscribers, PER_SUBSCRIBER_RATE, POINT_SECONDS)
            point[name] = result.as_dict()
            _record(perf, name, result)
        points.append(point)
        perf.detail("scaling_points", points)  # kept as it grows: a failed point leaves the others
    idle: dict[str, Any] = {"subscribers": IDLE_STREAMS, "idle": True, "load_average": _load()}
    for name, (address, source, pid) in targets.items():
        result = await idle_point(address, source, pid, IDLE_STREAMS)
        idle[name] = result.as_dict()
        _record(perf, name, result, idle=True)
    points.append(idle)
    perf.detail("scaling_points", points)
    perf.detail("idle_points", [IDLE_STREAMS])
    perf.detail("per_subscriber_rate", PER_SUBSCRIBER_RATE)
    perf.detail("point_seconds", POINT_SECONDS)

    lost = [(p["subscribers"], name, p[name]["lost"]) for p in points for name in targets if p[name]["lost"]]
    assert not lost, (
        f"expected every update delivered at every busy point and every idle stream "
        f"registered, for the connector and the relay baseline; got (subscribers, target, lost): {lost}"
    )


def _record(perf: PerfRecorder, target: str, result: PointResult, *, idle: bool = False) -> None:
    prefix = f"scaling_{target}_{'idle_' if idle else ''}{result.subscribers}"
    if result.deliveries_per_s is not None:
        perf.record(f"{prefix}_deliveries_per_s", result.deliveries_per_s, "msg/s")
    if result.p99_ms is not None:
        perf.record(f"{prefix}_p99_ms", result.p99_ms, "ms")
    if result.cpu_us_per_delivery is not None:
        perf.record(f"{prefix}_cpu_us_per_delivery", result.cpu_us_per_delivery, "us")
    perf.record(f"{prefix}_rss_kb_per_subscriber", result.rss_kb_per_subscriber, "KB")


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]
