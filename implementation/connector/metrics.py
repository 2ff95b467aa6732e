"""The connector's Prometheus metrics, read from the hub's own counters when scraped.

The hub counts with plain integers on its hot path; this collector turns them into metrics only
when /metrics is read, so serving metrics costs the stream loop nothing. Each connector has its
own registry (several servers in one process never collide).

    exchange_connector_subscribers{topic}                  gauge: subscribers connected now
    exchange_connector_messages_sent_total{topic}          messages written to subscribers
    exchange_connector_subscribers_dropped_total{topic}    subscribers ended with RESOURCE_EXHAUSTED
    exchange_connector_upstream_messages_total{topic}      valid updates received from the exchange
    exchange_connector_upstream_invalid_messages_total{topic}  updates rejected by validation
    exchange_connector_upstream_connections                gauge: 1 while the exchange connection is up
    exchange_connector_upstream_reconnects_total           upstream subscriptions reopened after a failure
    exchange_connector_serving                             gauge: 1 while health says SERVING
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from implementation.exchange.hub import TOPICS, Hub
from implementation.exchange.server import split_address

PREFIX = "exchange_connector_"


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

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
            PREFIX + "upstream_messages", "valid updates received from the exchange", labels=["topic"]
        )
        invalid = CounterMetricFamily(
            PREFIX + "upstream_invalid_messages", "exchange updates rejected by validation", labels=["topic"]
        )
        for topic in TOPICS:
            stats = hub.stats[topic]
            subscribers.add_metric([topic], hub.subscriber_count(topic))
            sent.add_metric([topic], stats.sent)
            dropped.add_metric([topic], stats.dropped)
            received.add_metric([topic], stats.published)
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
            PREFIX + "serving", "1 while health says SERVING", value=1 if hub.serving else 0
        )


class MetricsServer:
    """GET /metrics on HOST:PORT, served by prometheus-client on its own thread."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub))
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, address: str) -> int:
        """Listen on `address` (port 0: any free port); the bound port. OSError when it cannot."""
        host, port = split_address(address)
        self._server, self._thread = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        self.port = int(self._server.server_address[1])
        return self.port

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5.0)


__all__ = ["HubCollector", "MetricsServer"]
