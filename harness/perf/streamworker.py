"""The subscribers of a stream benchmark in a separate process (multiprocessing, spawn).

The test process keeps what it must hold (the mock exchange and the update generator); the
subscribers read in their own interpreter, as real clients would. The two sides share a priming
counter and, for a one-subscriber throughput run, a semaphore that keeps at most WINDOW updates in
flight. The worker sends its per-subscriber reports back through a pipe and exits.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from harness.doubles.baseline import StreamPlan
from harness.perf.fanout import WINDOW, StreamRun, SubscriberReport, UpdateSource, collect, summarise
from harness.perf.loadgen import PacingReport, Window

_CONTEXT = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
START_TIMEOUT_S = 30.0


def _worker(
    connection: Connection,
    address: str,
    plan: StreamPlan,
    subscribers: int,
    metadata: tuple[tuple[str, str], ...],
    window: Window | None,
    primed: Any,
    timeout: float,
) -> None:
    def count_primed() -> None:
        with primed.get_lock():
            primed.value += 1

    started = time.process_time()
    try:
        reports = asyncio.run(
            collect(address, plan, subscribers, metadata=metadata, window=window, on_primed=count_primed,
                    timeout=timeout)
        )  # fmt: skip
        connection.send(("ok", reports, time.process_time() - started))
    except BaseException as error:  # reported to the parent, which raises it in the test
        connection.send(("error", f"{type(error).__name__}: {error}", 0.0))
    finally:
        connection.close()


async def measure_isolated(
    address: str,
    source: UpdateSource,
    plan: StreamPlan,
    subscribers: int,
    *,
    windowed: bool,
    timeout: float,
    start_timeout: float = START_TIMEOUT_S,
) -> StreamRun:
    """stream_bench.measure_stream with the subscribers in a worker process; the worker is always reaped."""
    window = _CONTEXT.Semaphore(WINDOW) if windowed else None
    primed = _CONTEXT.Value("i", 0)
    receiving, sending = _CONTEXT.Pipe(duplex=False)
    worker = _CONTEXT.Process(
        target=_worker,
        args=(sending, address, plan, subscribers, source.metadata(plan), window, primed, timeout),
        name="stream-subscribers",
        daemon=True,
    )
    stop = threading.Event()
    pacing: PacingReport | None = None
    started = False
    try:
        worker.start()
        started = True
        sending.close()  # the worker holds the only sending end now: EOF when it dies
        await source.prepare(lambda: int(primed.value), subscribers, min(timeout, start_timeout))
        source_started = time.process_time()
        pacing = await source.generate(plan, window, stop)
        outcome = await asyncio.to_thread(_receive, receiving, timeout + start_timeout)
        source_cpu = time.process_time() - source_started
    finally:
        stop.set()
        receiving.close()
        sending.close()
        if started:
            worker.join(5.0)
            if worker.is_alive():
                worker.terminate()
                worker.join(5.0)
            worker.close()
    kind, payload, cpu_s = outcome
    if kind != "ok":
        raise RuntimeError(f"stream subscribers failed in their process: {payload}")
    reports: list[SubscriberReport] = payload
    run = summarise(reports, plan, pacing, cpu_s)
    run.source_cpu_s = source_cpu
    return run


def _receive(connection: Connection, timeout: float) -> tuple[str, Any, float]:
    if not connection.poll(timeout):
        raise TimeoutError(f"stream subscribers' process sent no result within {timeout:.0f} s")
    try:
        result: tuple[str, Any, float] = connection.recv()
    except EOFError:
        raise RuntimeError("stream subscribers' process ended without a result") from None
    return result
