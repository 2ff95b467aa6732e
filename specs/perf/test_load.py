"""§6.3 load: one connector, 10 market_maker-like and 5 live_server-like clients, 100 updates/s.

Method: the clients are the real RemoteExchange client library in the test process
(harness/clientsim.py): every client holds an account and a position stream, and the live_server-like
ones also poll GetAccount and GetPositions every second, as live_server's API does. Running them
in-process rather than as 15 programs lets each delivery be timed exactly (send stamp in
``updated_at`` to the client's callback) and each gap be seen by sequence number; 15 Python programs
on a 2-core machine would also measure the machine rather than the connector. A thread triggers
100 tagged account updates/s on the mock exchange for the run's duration (``--load-duration``;
20 s in the default run, 300 s with -m perf), after priming updates proved every client registered.
The connector's CPU (user + system time over wall time; 100 % = one core) and RSS are sampled
with psutil over the whole run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from harness.clientsim import make_clients, prime, start_all, stop_all, wait_delivered
from harness.loadgen import merged, run_paced, tagged_account
from harness.perfresults import PerfRecorder
from harness.procwatch import ProcessWatch

pytestmark = pytest.mark.perf

RATE = 100  # account updates per second
MARKET_MAKERS, LIVE_SERVERS = 10, 5
P99_TARGET_MS = 10.0
CPU_TARGET_PCT = 80.0
RSS_TARGET_MB = 1024.0


@pytest.mark.scenario("6.3.1.a", "6.3.1.b", "6.3.1.c", "6.3.1.d")
@pytest.mark.asyncio
async def test_load_of_15_clients_at_100_updates_per_second(
    connector: Any, mock_exchange: Any, perf: PerfRecorder, load_duration: float
) -> None:
    clients = make_clients(connector.address, MARKET_MAKERS, LIVE_SERVERS, run=1)
    count = int(RATE * load_duration)
    try:
        await start_all(clients)
        await prime(mock_exchange, clients)
        with ProcessWatch(connector.pid, interval=1.0) as watch:

            def send(seq: int) -> None:
                mock_exchange.trigger_account_update(tagged_account(1, seq))

            pacing = await asyncio.to_thread(run_paced, send, rate=RATE, count=count)
            await wait_delivered(clients, count, timeout=10.0)
            server = watch.stop()
    finally:
        await stop_all(clients)

    counts = [client.counts(accounts_sent=count) for client in clients]
    lost = sum(c.lost for c in counts)
    reordered = sum(c.reordered + c.duplicates for c in counts)
    latency = merged((client.latency for client in clients), "load")
    polls = merged((client.poll_latency for client in clients if client.kind == "live_server"), "polls")
    perf.record("load_lost_messages", lost, "msgs")
    perf.record("load_reordered_messages", reordered, "msgs")
    p99 = perf.record("load_p99_ms", latency.p_ms(99) if latency.count else float("inf"), "ms")
    if latency.count:
        perf.record("load_p50_ms", latency.p_ms(50), "ms")
        perf.record("load_p999_ms", latency.p_ms(99.9), "ms")
    cpu = perf.record("load_server_cpu_pct", server.cpu_avg_pct, "%")
    perf.record("load_server_cpu_peak_pct", server.cpu_peak_pct, "%")
    rss = perf.record("load_server_rss_mb", server.rss_peak_mb, "MB")
    if polls.count:
        perf.record("load_poll_p99_ms", polls.p_ms(99), "ms")
    perf.detail("duration_s", load_duration)
    perf.detail("deliveries", latency.count)
    perf.detail("generator_max_lag_ms", round(pacing.max_lag_s * 1000, 3))
    perf.detail("reconnects", sum(c.reconnects for c in counts))
    perf.detail("poll_errors", sum(c.poll_errors for c in counts))

    expected = count * len(clients)
    failures = []
    if lost or reordered or latency.count != expected:
        worst = max(clients, key=lambda c: c.accounts.lost(count))
        failures.append(
            f"6.3.1.a: expected all {count} updates delivered once and in order to each of {len(clients)} "
            f"clients ({expected} deliveries), got {latency.count} with {lost} lost and {reordered} "
            f"reordered/duplicated (e.g. {worst.name} missing {worst.accounts.missing(count, 5)}, "
            f"{sum(c.reconnects for c in counts)} reconnects)"
        )
    if not p99 < P99_TARGET_MS:
        failures.append(f"6.3.1.b: expected update latency p99 below {P99_TARGET_MS} ms, got {p99:.2f} ms")
    if not cpu < CPU_TARGET_PCT:
        failures.append(
            f"6.3.1.c: expected the connector's CPU below {CPU_TARGET_PCT:.0f} % of a core over the run, "
            f"got {cpu:.1f} % (peak {server.cpu_peak_pct:.1f} %)"
        )
    if not rss < RSS_TARGET_MB:
        failures.append(
            f"6.3.1.d: expected the connector's RSS below {RSS_TARGET_MB:.0f} MB, got {rss:.1f} MB"
        )
    assert not failures, "; ".join(failures)
