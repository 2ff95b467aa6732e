"""The connector's Prometheus metrics, read from the hub's own counters when scraped.

The hub counts with plain integers on its hot path; this collector turns them into metrics only
when /metrics is read, so serving metrics costs the stream loop nothing. Each connector has its
own registry (several servers in one process never collide).

    exchange_connector_subscribers{topic}                  gauge: subscribers connected now
    exchange_connector_messages_sent_total{topic}          messages written to subscribers
    exchange_connector_subscribers_dropped_total{topic}    subscribers ended with RESOURCE_EXHAUSTED
    exchange_connector_upstream_messages_total{topic}      updates read from the exchange, malformed ones included
    exchange_connector_upstream_invalid_messages_total{topic}  updates rejected by validation
    exchange_connector_upstream_connections                gauge: 1 while the exchange connection is up
    exchange_connector_upstream_reconnects_total           upstream subscriptions reopened after a failure
    exchange_connector_serving                             gauge: 1 while health says SERVING
    exchange_connector_data_age_seconds                    gauge: since the upstream's last sign of life
    exchange_connector_upstream_lag_seconds                gauge: how far the upstream read trails the exchange
    exchange_connector_stale                               gauge: 1 while the view must not be served as current
    exchange_connector_upstream_probes_total               liveness reads sent to a quiet upstream
    exchange_connector_upstream_hung_total                 upstream connections given up as hung
    exchange_connector_overload_sheds_total                times overload shed the laggiest quarter of subscribers
    exchange_connector_malformed_requests_total{method}    requests refused as not parseable (INVALID_ARGUMENT)
    exchange_connector_auth_rejected_total{reason}         calls refused with UNAUTHENTICATED (missing, invalid)
    exchange_connector_upstream_get_positions_calls_total  GetPositions calls made to the upstream
    exchange_connector_get_positions_shared_total          GetPositions answered by a call already in flight
    exchange_connector_calls_refused_total{reason}         new calls refused (shutting_down, overloaded)
    exchange_connector_tasks                               gauge: units of concurrent work (asyncio tasks here)
    process_*                                              the process's start time, CPU, memory, open files

The task count is how a black-box leak check sees the connector's coroutines (what go_goroutines is
to a Go program); it is counted on the loop's own thread, as asyncio.all_tasks requires.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from implementation.connector.metrics_http import AsyncMetricsHttp
from implementation.connector_core.hub import TOPICS, Hub
from implementation.connector_core.server import split_address
from implementation.connector_core.service_handlers import CallStats
from implementation.connector_core.shared_calls import SharedCalls

PREFIX = "exchange_connector_"
TASK_COUNT_TIMEOUT_S = 1.0


def count_tasks(loop: asyncio.AbstractEventLoop, timeout: float = TASK_COUNT_TIMEOUT_S) -> int | None:
    """The asyncio tasks alive on `loop`, counted on its own thread; None when it does not answer."""
    try:
        if asyncio.get_running_loop() is loop:
            return len(asyncio.all_tasks(loop))
    except RuntimeError:  # no loop runs on this thread: ask the loop's thread
        pass
    answer: concurrent.futures.Future[int] = concurrent.futures.Future()

    def count() -> None:
        if answer.set_running_or_notify_cancel():
            answer.set_result(len(asyncio.all_tasks(loop)))

    try:
        loop.call_soon_threadsafe(count)
        return answer.result(timeout)
    except (RuntimeError, concurrent.futures.TimeoutError):  # the loop is closed, or too busy to say
        answer.cancel()
        return None


class HubCollector(Collector):
    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._hub = hub
        self._loop = loop

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        subscribers = GaugeMetricFamily(PREFIX + "subscribers", "subscribers connected now", labels=["topic"])
        sent = CounterMetricFamily(
            PREFIX + "messages_sent", "messages written to subscribers", labels=["topic"]
        )
        dropped = CounterMetricFamily(
            PREFIX + "subscribers_dropped", "subscribers ended with RESOURCE_EXHAUSTED", labels=["topic"]
        )
        received = CounterMetricFamily(
            PREFIX + "upstream_messages",
            "updates read from the exchange, malformed ones included",
            labels=["topic"],
        )
        invalid = CounterMetricFamily(
            PREFIX + "upstream_invalid_messages", "exchange updates rejected by validation", labels=["topic"]
        )
        for topic in TOPICS:
            stats = hub.stats[topic]
            subscribers.add_metric([topic], hub.subscriber_count(topic))
            sent.add_metric([topic], stats.sent)
            dropped.add_metric([topic], stats.dropped)
            received.add_metric([topic], stats.received)
            invalid.add_metric([topic], stats.invalid)
        yield from (subscribers, sent, dropped, received, invalid)
        yield GaugeMetricFamily(
            PREFIX + "upstream_connections",
            "1 while the exchange connection is up",
            value=hub.upstream_connections,
        )
        yield CounterMetricFamily(
            PREFIX + "upstream_reconnects",
            "upstream subscriptions reopened after a failure",
            value=hub.upstream_reconnects,
        )
        yield GaugeMetricFamily(
            PREFIX + "serving", "1 while health says SERVING", value=1 if hub.healthy else 0
        )
        yield GaugeMetricFamily(
            PREFIX + "data_age_seconds",
            "seconds since the upstream exchange last gave a sign of life (update or liveness answer)",
            value=hub.data_age(),
        )
        yield GaugeMetricFamily(
            PREFIX + "upstream_lag_seconds",
            "how far the connector's upstream read trails the exchange's stamps",
            value=hub.freshness.upstream_lag if hub.serving else 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "stale",
            "1 while the view is past its freshness bound and is not served as current",
            value=1 if hub.stale_reason() is not None else 0,
        )
        yield CounterMetricFamily(
            PREFIX + "upstream_probes", "liveness reads sent to a quiet upstream", value=hub.probes
        )
        yield CounterMetricFamily(
            PREFIX + "upstream_hung", "upstream connections given up as hung", value=hub.hung_upstreams
        )
        yield CounterMetricFamily(
            PREFIX + "overload_sheds",
            "times overload shed the laggiest quarter of the subscribers",
            value=hub.shed_rounds,
        )
        tasks = count_tasks(self._loop) if self._loop is not None else None
        if tasks is not None:
            yield GaugeMetricFamily(
                PREFIX + "tasks",
                "the connector's units of concurrent work: asyncio tasks on its loop",
                value=tasks,
            )


class MetricsServer:
    """GET /metrics on HOST:PORT, served from the connector's event loop (metrics_http.py).

    Made inside the connector's event loop, it also reports that loop's task count."""

    def __init__(
        self,
        hub: Hub,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        stats: CallStats | None = None,
        positions: SharedCalls[str, Any] | None = None,
        refused: Counter[str] | None = None,
    ) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # made outside a loop: no task count
                loop = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub, loop))
        self.registry.register(CallCollector(stats or CallStats(), positions, refused))
        # process_start_time_seconds (restarts), CPU, memory and open files of this process
        ProcessCollector(registry=self.registry)
        self.port = 0
        self._http = AsyncMetricsHttp(self.registry)

    async def start(self, address: str) -> int:
        """Listen on `address` (port 0: any free port); the bound port. OSError when it cannot."""
        host, port = split_address(address)
        self.port = await self._http.start(host.strip("[]"), port)
        return self.port

    async def stop(self) -> None:
        await self._http.stop()


class CallCollector(Collector):
    """Calls refused before they reached the service, and upstream calls shared by several clients."""

    def __init__(
        self, stats: CallStats, positions: SharedCalls[str, Any] | None, refused: Counter[str] | None = None
    ) -> None:
        self._stats = stats
        self._positions = positions
        self._refused = refused if refused is not None else Counter()

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        malformed = CounterMetricFamily(
            PREFIX + "malformed_requests",
            "requests refused with INVALID_ARGUMENT: not parseable",
            labels=["method"],
        )
        for method, count in sorted(stats.malformed.items()):
            malformed.add_metric([method], count)
        rejected = CounterMetricFamily(
            PREFIX + "auth_rejected", "calls refused with UNAUTHENTICATED", labels=["reason"]
        )
        for reason in ("missing", "invalid"):
            rejected.add_metric([reason], stats.auth_rejected[reason])
        refused = CounterMetricFamily(
            PREFIX + "calls_refused",
            "new calls refused: UNAVAILABLE while shutting down, RESOURCE_EXHAUSTED at the limit of calls in flight",
            labels=["reason"],
        )
        for reason in ("shutting_down", "overloaded"):
            refused.add_metric([reason], self._refused[reason])
        yield from (malformed, rejected, refused)
        if self._positions is not None:
            yield CounterMetricFamily(
                PREFIX + "upstream_get_positions_calls",
                "GetPositions calls made to the upstream",
                value=self._positions.started,
            )
            yield CounterMetricFamily(
                PREFIX + "get_positions_shared",
                "GetPositions calls answered by an upstream call already in flight for the same symbol",
                value=self._positions.joined,
            )


__all__ = ["CallCollector", "HubCollector", "MetricsServer", "count_tasks"]
