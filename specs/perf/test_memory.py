"""§6.2 memory: streaming for 60 s (-m perf; 10 s in the default run) grows neither the connector nor
its clients by 10 MB, and leaves thread, task and fd counts where they were.

Method: two market_maker-like clients (the real RemoteExchange client library, in the test process)
hold account and position streams while a thread triggers 500 account updates/s on the mock
exchange. A warm-up at the same rate comes first, so buffers, caches and the allocator's arenas
reach their steady state; then the "before" snapshots are taken (connector: psutil RSS, OS threads,
fds; test process: RSS, Python threads, asyncio tasks, fds), the measured period streams, every
update is confirmed delivered, and the "after" snapshots are compared (with a few seconds' settling
for counts). The connector's asyncio tasks cannot be seen from outside its process; its OS threads
and fds can.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from harness.perf.clientsim import SimulatedClient, make_clients, prime, start_all, stop_all, wait_delivered
from harness.perf.loadgen import run_paced
from harness.perf.probes import ResourceSnapshot, assert_no_growth, assert_no_growth_async
from harness.perf.results import PerfRecorder
from harness.tagged_updates import tagged_account
from harness.verdicts import Verdicts

pytestmark = pytest.mark.perf

RATE = 500  # account updates per second
DURATION_S = {"quick": 10.0, "full": 60.0}
WARMUP_S = {"quick": 3.0, "full": 10.0}
GROWTH_LIMIT_MB = 10.0
# grpc's thread pool may add a thread while streams are busy and retires it after 20 s idle
# (grpc core, work_stealing_thread_pool: kIdleThreadLimit); that thread is not a leak
THREAD_POOL_SETTLE_S = 25.0


async def _stream(mock: Any, clients: list[SimulatedClient], first: int, seconds: float) -> int:
    """Trigger RATE updates/s for `seconds` from number `first`; the last number, once all delivered."""
    count = int(RATE * seconds)

    def send(seq: int) -> None:
        mock.trigger_account_update(tagged_account(1, seq))

    report = await asyncio.to_thread(run_paced, send, rate=RATE, count=count, first=first)
    last = first + report.sent - 1
    delivered = await wait_delivered(clients, last, timeout=15.0)
    assert delivered, (
        f"expected every client to get all {last} account updates, got "
        f"{[c.accounts.received for c in clients]} (lost {[c.accounts.lost(last) for c in clients]})"
    )
    return last


async def _sample(pid: int, into: list[dict[str, float]], interval: float = 1.0) -> None:
    """The connector's and the test process's resources every `interval` s, until cancelled."""
    started = time.monotonic()
    while True:
        server, client = ResourceSnapshot.take(pid), ResourceSnapshot.take()
        into.append(
            {"t_s": round(time.monotonic() - started, 2), "server_rss_mb": round(server.rss_mb, 3),
             "server_threads": server.threads, "server_fds": server.fds,
             "client_rss_mb": round(client.rss_mb, 3), "client_tasks": client.tasks}
        )  # fmt: skip
        await asyncio.sleep(interval)


@pytest.mark.scenario("6.2.1.a", "6.2.1.b")
@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_streaming_grows_neither_memory_nor_threads_tasks_or_fds(
    connector: Any, mock_exchange: Any, perf: PerfRecorder, run_mode: str, verdicts: Verdicts
) -> None:
    clients = make_clients(connector.address, 2, 0, run=1)
    series: list[dict[str, float]] = []
    try:
        await start_all(clients)
        await prime(mock_exchange, clients)
        warmed = await _stream(mock_exchange, clients, 1, WARMUP_S[run_mode])
        gc.collect()
        server_before = ResourceSnapshot.take(connector.pid)
        client_before = ResourceSnapshot.take()
        sampling = asyncio.create_task(_sample(connector.pid, series))
        try:
            last = await _stream(mock_exchange, clients, warmed + 1, DURATION_S[run_mode])
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        perf.detail("series", series)  # the report's resources-over-time chart
        gc.collect()
        server_after = ResourceSnapshot.take(connector.pid)
        client_after = ResourceSnapshot.take()

        server_growth = perf.record(
            "memory_server_growth_mb", server_after.rss_mb - server_before.rss_mb, "MB"
        )
        client_growth = perf.record(
            "memory_client_growth_mb", client_after.rss_mb - client_before.rss_mb, "MB"
        )
        perf.record("memory_growth_mb", max(server_growth, client_growth), "MB")
        perf.record("memory_server_threads_delta", server_after.threads - server_before.threads, "threads")
        perf.record("memory_server_fds_delta", server_after.fds - server_before.fds, "fds")
        perf.record("memory_client_tasks_delta", client_after.tasks - client_before.tasks, "tasks")
        perf.detail("updates_measured", last - warmed)
        perf.detail("server_rss_mb", [round(server_before.rss_mb, 2), round(server_after.rss_mb, 2)])
        perf.detail("client_rss_mb", [round(client_before.rss_mb, 2), round(client_after.rss_mb, 2)])

        with verdicts.check("6.2.1.a"):
            assert server_growth < GROWTH_LIMIT_MB, (
                f"expected the connector's RSS to grow by less than {GROWTH_LIMIT_MB} MB "
                f"over {DURATION_S[run_mode]:.0f} s of streaming ({last - warmed} updates to 2 clients), got "
                f"{server_before.rss_mb:.1f} -> {server_after.rss_mb:.1f} MB (+{server_growth:.1f} MB)"
            )
            assert client_growth < GROWTH_LIMIT_MB, (
                f"expected the clients' process RSS to grow by less than "
                f"{GROWTH_LIMIT_MB} MB over {DURATION_S[run_mode]:.0f} s of streaming, got "
                f"{client_before.rss_mb:.1f} -> {client_after.rss_mb:.1f} MB (+{client_growth:.1f} MB)"
            )
        with verdicts.check("6.2.1.b"):
            await asyncio.to_thread(
                assert_no_growth,
                server_before,
                server_after,
                settle_s=THREAD_POOL_SETTLE_S,
                label="connector (threads, fds)",
            )
            await assert_no_growth_async(client_before, client_after, label="clients (threads, tasks, fds)")
    finally:
        await stop_all(clients)
