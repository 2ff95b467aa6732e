"""The scaling curve: what one target costs as its subscribers grow, at a fixed rate per subscriber.

A *busy point* opens N SubscribeAccount streams (the stream benchmark's subscribers, in a worker
process) and sends `rate` updates/s for `seconds`, so each subscriber gets `rate` updates/s and the
target delivers N x rate per second. Figures: deliveries/s, delivery p50/p99, the server's CPU time
per delivery (all of its CPU while the point ran, set-up included, over the deliveries) and its RSS
per subscriber (peak RSS during the point minus RSS before it, over N).

An *idle point* opens N streams that get only the priming updates (proof that each is registered)
and measures the server's RSS per stream while they are open. The idle streams share channels
(IDLE_STREAMS_PER_CHANNEL each) so the client side stays small; they live in the test process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import psutil

from harness.doubles.baseline import StreamPlan
from harness.perf.fanout import UpdateSource
from harness.perf.procwatch import ProcessWatch
from harness.perf.stream_bench import measure_stream
from harness.tagged_updates import PRIMING_RUN, account_tag
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

IDLE_STREAMS_PER_CHANNEL = 10
IDLE_BATCH = 500
START_TIMEOUT_S = 180.0  # a thousand connections opened at once on a busy two-core host
MB = 1024 * 1024


@dataclass(frozen=True)
class PointResult:
    subscribers: int
    deliveries_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_us_per_delivery: float | None
    rss_kb_per_subscriber: float
    lost: int
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            key: (round(value, 3) if isinstance(value, float) else value)
            for key, value in asdict(self).items()
        }


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MB


async def busy_point(
    address: str, source: UpdateSource, pid: int, subscribers: int, rate: float, seconds: float
) -> PointResult:
    plan = StreamPlan(count=max(1, int(rate * seconds)), rate=rate, run=1)
    rss_before = _rss_mb(pid)
    started = time.monotonic()
    with ProcessWatch(pid, interval=0.25) as watch:
        run = await measure_stream(
            address,
            source,
            plan,
            subscribers=subscribers,
            timeout=seconds + 120,
            start_timeout=START_TIMEOUT_S,
        )
        stats = watch.stop()
    cpu_s = stats.cpu_avg_pct * stats.elapsed_s / 100
    return PointResult(
        subscribers=subscribers,
        deliveries_per_s=run.deliveries_per_s,
        p50_ms=run.latency.p_ms(50) if run.latency.count else None,
        p99_ms=run.latency.p_ms(99) if run.latency.count else None,
        cpu_us_per_delivery=1e6 * cpu_s / run.received if run.received else None,
        rss_kb_per_subscriber=1024 * (stats.rss_peak_mb - rss_before) / subscribers,
        lost=run.lost,
        elapsed_s=time.monotonic() - started,
    )


async def idle_point(
    address: str, source: UpdateSource, pid: int, streams: int, timeout: float = START_TIMEOUT_S
) -> PointResult:
    """`streams` open, registered streams and nothing else; the server's RSS per stream.

    Opened IDLE_BATCH at a time, each batch proven registered before the next: thousands of calls
    arriving at once measure the server's admission, not what an open stream costs."""
    rss_before = _rss_mb(pid)
    started = time.monotonic()
    primed = [0]
    failed: list[str] = []
    channels = [grpc.aio.insecure_channel(address) for _ in range(-(-streams // IDLE_STREAMS_PER_CHANNEL))]
    calls: list[Any] = []
    readers: list[asyncio.Task[None]] = []

    async def read(call: Any) -> None:
        seen = False
        try:
            async for account in call:
                tag = account_tag(account)
                if not seen and tag is not None and tag[0] == PRIMING_RUN:
                    seen = True
                    primed[0] += 1
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED or not closing:
                failed.append(error.code().name)

    closing = False
    try:
        deadline = time.monotonic() + timeout
        while len(calls) < streams:
            for _ in range(min(IDLE_BATCH, streams - len(calls))):
                channel = channels[len(calls) // IDLE_STREAMS_PER_CHANNEL]
                call = pb_grpc.ExchangeServiceStub(channel).SubscribeAccount(pb.SubscribeAccountRequest())
                calls.append(call)
                readers.append(asyncio.create_task(read(call)))
            await source.prepare(
                lambda: primed[0] + len(failed), len(calls), max(1.0, deadline - time.monotonic())
            )
        await asyncio.sleep(2.0)  # let the server settle before reading its RSS
        rss_open = _rss_mb(pid)
    finally:
        closing = True
        for call in calls:
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in channels))
    return PointResult(
        subscribers=streams, deliveries_per_s=None, p50_ms=None, p99_ms=None, cpu_us_per_delivery=None,
        rss_kb_per_subscriber=1024 * (rss_open - rss_before) / streams, lost=streams - primed[0],
        elapsed_s=time.monotonic() - started,
    )  # fmt: skip
