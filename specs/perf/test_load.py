"""§6.3 load: one connector, 10 market_maker-like and 5 live_server-like clients, 100 updates/s.

Method: the clients are the real RemoteExchange client library in processes of their own, as the
real programs are (harness/perf/loadworker.py): one process holds the 10 market_maker-like clients,
another the 5 live_server-like ones, each on the programs' event loop. Every client is its own
RemoteExchange (its own channel, so its own connection) holding an account and a position stream;
the live_server-like ones also poll GetAccount and GetPositions every second, as live_server's API
does. Each delivery is timed in the client (send stamp in ``updated_at`` to the client's callback;
every process reads the same wall clock; the mock exchange stamps each update as it writes it, so
the harness's own trigger hand-off is not counted) and each gap is seen by sequence number. The test process
keeps only the mock exchange and a thread triggering 100 tagged account updates/s on it for the
run's duration (-m perf: ``--load-duration``, 300 s by default; the quick form in the default run:
20 s, without judging p99), after priming updates proved every client registered. The connector's CPU (user + system time over wall time;
100 % = one core) and RSS are sampled with psutil over the whole run.

Also reported, not asserted: the same updates read straight from the mock exchange by a raw
subscriber in the live_server-like clients' process (``load_exchange_direct_p99_ms``), i.e. what
the machine and the harness alone cost over the same run; and, before the run, how long a ~1 ms
piece of plain CPU work takes on this machine at worst (``machine_cpu_work_p99_ms`` / ``_max_ms``,
harness/perf/machine_probe.py): a virtual machine whose host takes its CPUs away now and then puts
those stalls under every tail latency measured on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from harness.doubles.baseline import StreamPlan
from harness.perf.fanout import summarise
from harness.perf.loadgen import merged, run_paced
from harness.perf.loadworker import ClientGroup, ClientProcesses
from harness.perf.machine_probe import probe_steadiness
from harness.perf.procwatch import ProcessWatch
from harness.perf.results import PerfRecorder
from harness.tagged_updates import PRIMING_RUN, tagged_account
from harness.verdicts import Verdicts
from specs.targets import check_target

pytestmark = pytest.mark.perf

RATE = 100  # account updates per second
MARKET_MAKERS, LIVE_SERVERS = 10, 5
P99_TARGET_MS = 10.0
CPU_TARGET_PCT = 80.0
RSS_TARGET_MB = 1024.0
STEADINESS_PROBE_S = 5.0
QUICK_DURATION_S = 20.0


# The p99 target is judged only in the full run (-m perf): on a virtual machine that stalls now and
# then (docs/BENCHMARKS.md), 20 seconds hold too few stalls for a stable p99, so the quick form in
# the default run judges loss, CPU and memory and reports its p99 without judging it.
@pytest.mark.perf_long
@pytest.mark.scenario("6.3.1.a", "6.3.1.b", "6.3.1.c", "6.3.1.d")
@pytest.mark.asyncio
async def test_load_of_15_clients_at_100_updates_per_second(
    connector: Any, mock_exchange: Any, perf: PerfRecorder, load_duration: float, verdicts: Verdicts
) -> None:
    await _run_load(connector, mock_exchange, perf, verdicts, load_duration, judge_p99=True)


@pytest.mark.scenario("6.3.1.a", "6.3.1.c", "6.3.1.d")
@pytest.mark.asyncio
async def test_load_quick_form_loses_nothing_within_cpu_and_memory(
    connector: Any, mock_exchange: Any, perf: PerfRecorder, verdicts: Verdicts
) -> None:
    await _run_load(connector, mock_exchange, perf, verdicts, QUICK_DURATION_S, judge_p99=False)


async def _run_load(
    connector: Any,
    mock_exchange: Any,
    perf: PerfRecorder,
    verdicts: Verdicts,
    load_duration: float,
    *,
    judge_p99: bool,
) -> None:
    count = int(RATE * load_duration)
    # the quick form's figures have names of their own: they never stand for the full run's
    prefix = "load_" if judge_p99 else "load_quick_"
    # what the machine alone does with plain CPU work, measured while the connector is idle
    steadiness = await asyncio.to_thread(probe_steadiness, STEADINESS_PROBE_S) if judge_p99 else None
    mock_exchange.stamp_on_send()  # the send time is when the exchange writes the update
    groups = [ClientGroup("market_maker", MARKET_MAKERS), ClientGroup("live_server", LIVE_SERVERS)]
    with ClientProcesses(
        connector.address, groups, run=1, count=count, reference=mock_exchange.address
    ) as clients:
        await clients.prime(
            lambda seq: mock_exchange.trigger_account_update(tagged_account(PRIMING_RUN, seq))
        )
        with ProcessWatch(connector.pid, interval=1.0) as watch:

            def send(seq: int) -> None:
                mock_exchange.trigger_account_update(tagged_account(1, seq))

            pacing = await asyncio.to_thread(run_paced, send, rate=RATE, count=count)
            results = await clients.finish()
            server = watch.stop()

    reports = [report for result in results for report in result.clients]
    lost = sum(report.counts.lost for report in reports)
    reordered = sum(report.counts.reordered + report.counts.duplicates for report in reports)
    reconnects = sum(report.counts.reconnects for report in reports)
    latency = merged((report.latency() for report in reports), "load")
    polls = merged((report.poll_latency() for report in reports if report.kind == "live_server"), "polls")
    direct = [result.reference for result in results if result.reference is not None]
    perf.record(f"{prefix}lost_messages", lost, "msgs")
    perf.record(f"{prefix}reordered_messages", reordered, "msgs")
    p99 = perf.record(f"{prefix}p99_ms", latency.p_ms(99) if latency.count else float("inf"), "ms")
    if latency.count:
        perf.record(f"{prefix}p50_ms", latency.p_ms(50), "ms")
        perf.record(f"{prefix}p999_ms", latency.p_ms(99.9), "ms")
    cpu = perf.record(f"{prefix}server_cpu_pct", server.cpu_avg_pct, "%")
    perf.record(f"{prefix}server_cpu_peak_pct", server.cpu_peak_pct, "%")
    rss = perf.record(f"{prefix}server_rss_mb", server.rss_peak_mb, "MB")
    if polls.count:
        perf.record(f"{prefix}poll_p99_ms", polls.p_ms(99), "ms")
    exchange_direct = summarise(direct, StreamPlan(count=count, run=1), None, 0.0).latency if direct else None
    if exchange_direct is not None and exchange_direct.count:
        perf.record(f"{prefix}exchange_direct_p99_ms", exchange_direct.p_ms(99), "ms")
    if steadiness is not None:
        perf.record("machine_cpu_work_p99_ms", steadiness.p99_ms, "ms")
        perf.record("machine_cpu_work_max_ms", steadiness.max_ms, "ms")
        perf.detail("machine_cpu_work_unit_ms", round(steadiness.unit_ms, 3))
    perf.detail("duration_s", load_duration)
    perf.detail("deliveries", latency.count)
    perf.detail("generator_max_lag_ms", round(pacing.max_lag_s * 1000, 3))
    perf.detail("reconnects", reconnects)
    perf.detail("poll_errors", sum(report.counts.poll_errors for report in reports))
    perf.detail("client_process_cpu_s", {result.group.kind: round(result.cpu_s, 2) for result in results})

    expected = count * len(reports)
    worst = max(reports, key=lambda report: report.counts.lost)
    with verdicts.check("6.3.1.a"):
        assert not (lost or reordered or latency.count != expected), (
            f"0 % message loss: expected all {count} updates delivered once and in "
            f"order to each of {len(reports)} clients ({expected} deliveries), got {latency.count} with {lost} "
            f"lost and {reordered} reordered/duplicated (e.g. {worst.name} missing {worst.missing}, "
            f"{reconnects} reconnects)"
        )
    if judge_p99:
        machine = (
            f"; the exchange's own stream read directly had p99 {exchange_direct.p_ms(99):.2f} ms over the same run"
            if exchange_direct is not None and exchange_direct.count
            else ""
        )
        if steadiness is not None:
            machine += f"; on this machine {steadiness.describe()}"
        check_target(
            verdicts,
            "6.3.1.b",
            p99 < P99_TARGET_MS,
            f"update latency p99 below {P99_TARGET_MS} ms",
            f"{p99:.2f} ms{machine}",
        )
    check_target(
        verdicts,
        "6.3.1.c",
        cpu < CPU_TARGET_PCT,
        f"the connector's CPU below {CPU_TARGET_PCT:.0f} % of a core over the run",
        f"{cpu:.1f} % (peak {server.cpu_peak_pct:.1f} %)",
    )
    check_target(
        verdicts,
        "6.3.1.d",
        rss < RSS_TARGET_MB,
        f"the connector's RSS below {RSS_TARGET_MB:.0f} MB",
        f"{rss:.1f} MB",
    )
