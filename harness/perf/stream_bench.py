"""A stream benchmark: subscribers read a planned run of updates from a source, in this process or in a
worker process of their own (harness.perf.streamworker), and the run is summarised."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

from harness.doubles.baseline import StreamPlan
from harness.perf.fanout import WINDOW, StreamRun, UpdateSource, collect, summarise
from harness.perf.streamworker import measure_isolated


async def measure_stream(
    address: str,
    source: UpdateSource,
    plan: StreamPlan,
    *,
    subscribers: int = 1,
    windowed: bool = False,
    timeout: float = 60.0,
    isolated: bool = True,
    start_timeout: float = 30.0,
) -> StreamRun:
    """Open `subscribers` streams to `address`, run `plan` from `source`, gather what arrived.

    windowed=True sends as fast as the path sustains (at most WINDOW updates in flight, meant for one
    subscriber); otherwise at the plan's rate. isolated=True reads in a separate process; False in
    this one (quicker to start, for small runs). Nothing is left running on return. The subscribers
    form one fan-out group (for the baseline: one generator feeding them all). `start_timeout`
    bounds the wait for every subscriber to be registered.
    """
    plan = dataclasses.replace(plan, group=subscribers)
    if isolated:
        return await measure_isolated(
            address,
            source,
            plan,
            subscribers,
            windowed=windowed,
            timeout=timeout,
            start_timeout=start_timeout,
        )
    window = threading.Semaphore(WINDOW) if windowed else None
    primed = [0]

    def count_primed() -> None:
        primed[0] += 1

    stop = threading.Event()
    cpu_started = time.process_time()  # one process: the subscribers' CPU is the source's too
    reading = asyncio.create_task(
        collect(address, plan, subscribers, metadata=source.metadata(plan), window=window,
                on_primed=count_primed, timeout=timeout)
    )  # fmt: skip
    try:
        await source.prepare(lambda: primed[0], subscribers, min(timeout, start_timeout))
        pacing = await source.generate(plan, window, stop)
        reports = await reading
    finally:
        stop.set()
        if not reading.done():
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    run = summarise(reports, plan, pacing, time.process_time() - cpu_started)
    run.source_cpu_s = run.client_cpu_s
    return run
