"""live_server's Prometheus metrics, in a registry of their own (one per app, so apps never collide)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from implementation.live_server.feed import Broadcaster
from implementation.state import LiveState, StateChange


class LiveServerMetrics:
    def __init__(self, state: LiveState, broadcaster: Broadcaster) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        Gauge(
            "live_server_connected", "1 while the exchange connector is reachable", registry=registry
        ).set_function(lambda: 1.0 if state.connected else 0.0)
        Gauge(
            "live_server_ready", "1 while connected and holding account data", registry=registry
        ).set_function(lambda: 1.0 if state.ready else 0.0)
        Gauge("live_server_positions", "positions held", registry=registry).set_function(
            lambda: float(len(state.positions))
        )
        Gauge("live_server_websocket_clients", "connected WebSocket clients", registry=registry).set_function(
            lambda: float(broadcaster.client_count)
        )
        self.updates = Counter(
            "live_server_updates", "state changes received, by kind", ["kind"], registry=registry
        )
        self.resyncs = Counter(
            "live_server_resyncs",
            "full reads of account and positions (start and reconnects)",
            registry=registry,
        )
        registry.register(_DroppedClients(broadcaster))
        self.http_requests = Counter(
            "live_server_http_requests",
            "HTTP requests by route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.last_update = Gauge(
            "live_server_last_update_timestamp_seconds",
            "when the last update arrived (Unix time)",
            registry=registry,
        )
        # process_start_time_seconds (restarts), CPU, memory and open files of this process
        ProcessCollector(registry=registry)
        state.add_listener(self._on_change)

    def _on_change(self, change: StateChange) -> None:
        if change.kind == "snapshot":
            self.resyncs.inc()
        elif change.kind in ("account", "position"):
            self.updates.labels(kind=change.kind).inc()
            self.last_update.set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DroppedClients(Collector):
    """Reads the broadcaster's own count, so the feed needs no knowledge of metrics."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self._broadcaster = broadcaster

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "live_server_websocket_dropped",
            "WebSocket clients dropped for not keeping up",
            value=self._broadcaster.dropped_total,
        )
