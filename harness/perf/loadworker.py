"""Simulated clients of the load level in their own processes, as the real programs would be.

Each worker process (multiprocessing, spawn) runs a group of harness.perf.clientsim clients of one kind
(e.g. the 10 market_maker-like ones), each a RemoteExchange of its own: its own channel, so its
own connection and streams to the connector. A worker runs on the event loop the real programs
use (uvloop where installed: harness.perf.loops). The test process keeps the mock
exchange and the update generator, so neither the clients nor the mock measure each other's
interpreter lock.

Optionally one worker also reads the exchange's own stream directly (a raw SubscribeAccount on the
mock exchange, ``reference``): the same updates over the same run without the connector, so a
report shows how much of the latency the machine and the harness account for.

Protocol with the test process: the workers count their clients that got a priming update in a
shared counter (the test primes until all did); once the test has sent the whole run it sets
`finished`, each worker waits for the run to arrive (at most DELIVERY_WAIT_S) and sends one
report per client through its pipe, then stops its clients and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

import grpc

from harness import loops
from harness.doubles.baseline import StreamPlan
from harness.perf.clientsim import ClientCounts, SimulatedClient, start_all, stop_all, wait_delivered
from harness.perf.fanout import AccountSubscriber, SubscriberReport
from harness.perf.probes import LatencyRecorder

_CONTEXT = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
START_TIMEOUT_S = 30.0  # spawn, imports, connect and subscribe
DELIVERY_WAIT_S = 10.0  # after the last update was sent


@dataclass(frozen=True)
class ClientGroup:
    """`count` simulated clients of one kind, in one worker process."""

    kind: str
    count: int
    poll_interval: float = 1.0


@dataclass
class ClientReport:
    """What one simulated client saw; plain data, so it crosses a process boundary."""

    name: str
    kind: str
    counts: ClientCounts
    missing: list[int]  # the first account numbers that never arrived
    latencies_us: bytes  # array("q"): every delivery of this run
    poll_latencies_us: bytes  # array("q"): every GetAccount poll

    def latency(self) -> LatencyRecorder:
        return _recorder(f"{self.name} updates", self.latencies_us)

    def poll_latency(self) -> LatencyRecorder:
        return _recorder(f"{self.name} polls", self.poll_latencies_us)


@dataclass
class WorkerResult:
    group: ClientGroup
    clients: list[ClientReport]
    cpu_s: float  # the worker's CPU time from start-up to its report
    reference: SubscriberReport | None = None  # the exchange's stream read directly, when asked


def _recorder(name: str, samples: bytes) -> LatencyRecorder:
    recorder = LatencyRecorder(name)
    for microseconds in array("q", samples):
        recorder.record_us(microseconds)
    return recorder


# ------------------------------------------------------------------------------------ worker side


@dataclass(frozen=True)
class _Job:
    """What one worker does (sent to it when it starts)."""

    address: str
    group: ClientGroup
    first_index: int
    run: int
    count: int
    reference: str | None  # read this exchange address directly too


def _worker(connection: Connection, job: _Job, primed: Any, finished: Any) -> None:
    started = time.process_time()
    outcome: tuple[str, Any]
    try:
        reports, reference = loops.run(_serve(job, primed, finished))
        outcome = ("ok", WorkerResult(job.group, reports, time.process_time() - started, reference))
    except BaseException as error:  # reported to the test process, which raises it in the test
        outcome = ("error", f"{job.group.kind} clients: {type(error).__name__}: {error}")
    with contextlib.suppress(OSError):  # the test process stopped listening: it failed already
        connection.send(outcome)
    connection.close()


async def _serve(job: _Job, primed: Any, finished: Any) -> tuple[list[ClientReport], SubscriberReport | None]:
    group = job.group
    clients = [
        SimulatedClient(
            job.address,
            group.kind,
            run=job.run,
            poll_interval=group.poll_interval,
            keep_samples=True,
            name=f"{group.kind}-{job.first_index + index}",
        )
        for index in range(group.count)
    ]

    def count_primed() -> None:
        with primed.get_lock():
            primed.value += 1

    channel = grpc.aio.insecure_channel(job.reference) if job.reference is not None else None
    reference: AccountSubscriber | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await start_all(clients, START_TIMEOUT_S)
        gc.freeze()  # as a long-running client program would: start-up objects out of every collection
        tasks = [asyncio.create_task(_when_primed(client, count_primed)) for client in clients]
        if channel is not None:
            plan = StreamPlan(count=job.count, run=job.run)
            reference = AccountSubscriber(channel, plan, on_primed=count_primed)
            tasks.append(asyncio.create_task(reference.run()))
        while not await asyncio.to_thread(finished.wait, 0.5):
            pass
        await wait_delivered(clients, job.count, timeout=DELIVERY_WAIT_S)
        if reference is not None:
            await asyncio.wait(tasks[-1:], timeout=DELIVERY_WAIT_S)
        reports = [_report(client, job.count) for client in clients]
        return reports, SubscriberReport.of(reference, job.count) if reference is not None else None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop_all(clients)
        if channel is not None:
            await channel.close()


async def _when_primed(client: SimulatedClient, count_primed: Callable[[], None]) -> None:
    await client.primed.wait()
    count_primed()


def _report(client: SimulatedClient, count: int) -> ClientReport:
    return ClientReport(
        name=client.name,
        kind=client.kind,
        counts=client.counts(accounts_sent=count),
        missing=client.accounts.missing(count, 5),
        latencies_us=client.samples_us.tobytes(),
        poll_latencies_us=client.poll_samples_us.tobytes(),
    )


# ------------------------------------------------------------------------------------ test side


class ClientProcesses:
    """One worker process per group; start(), prime, run, finish(), then close() (or `with`).

    With `reference` (an exchange address), the last group's worker also reads that exchange's
    account stream directly."""

    def __init__(
        self,
        address: str,
        groups: Sequence[ClientGroup],
        *,
        run: int,
        count: int,
        reference: str | None = None,
    ) -> None:
        self.groups = list(groups)
        self.total = sum(group.count for group in groups) + (reference is not None)  # streams to prime
        self._primed = _CONTEXT.Value("i", 0)
        self._finished = _CONTEXT.Event()
        self._pipes: list[Connection] = []
        self._workers: list[Any] = []
        first_index = 0
        for number, group in enumerate(self.groups):
            receiving, sending = _CONTEXT.Pipe(duplex=False)
            job = _Job(
                address, group, first_index, run, count, reference if number == len(groups) - 1 else None
            )
            args = (sending, job, self._primed, self._finished)
            worker = _CONTEXT.Process(target=_worker, args=args, name=f"{group.kind}-clients", daemon=True)
            self._pipes.append(receiving)
            self._workers.append((worker, sending))
            first_index += group.count

    @property
    def primed(self) -> int:
        """Clients that got a priming update (all of them: every client is registered)."""
        return int(self._primed.value)

    def start(self) -> ClientProcesses:
        for worker, sending in self._workers:
            worker.start()
            sending.close()  # the worker holds the only sending end now: EOF when it dies
        return self

    async def prime(self, trigger: Callable[[int], object], timeout: float = START_TIMEOUT_S) -> None:
        """Call trigger(seq) every 20 ms until every client (and the reference stream) got a priming update."""
        deadline = time.monotonic() + timeout
        seq = 0
        while self.primed < self.total:
            if time.monotonic() > deadline or self._any_dead():
                raise TimeoutError(
                    f"{self.total - self.primed} of {self.total} account streams got no update within "
                    f"{timeout:.0f} s of starting: expected the connector to forward each update to all"
                    f"{self._errors_so_far()}"
                )
            seq += 1
            trigger(seq)
            await asyncio.sleep(0.02)

    async def finish(self) -> list[WorkerResult]:
        """Tell the workers the run is sent; their results once each saw it arrive (or gave up)."""
        self._finished.set()
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(_receive, pipe, DELIVERY_WAIT_S + START_TIMEOUT_S) for pipe in self._pipes)
        )
        errors = [payload for kind, payload in outcomes if kind != "ok"]
        if errors:
            raise RuntimeError(f"simulated clients failed in their processes: {'; '.join(map(str, errors))}")
        return [payload for _, payload in outcomes]

    def close(self) -> None:
        """Stop and reap every worker (those that did not finish are terminated)."""
        self._finished.set()
        for pipe in self._pipes:
            pipe.close()
        for worker, sending in self._workers:
            sending.close()
            if worker.pid is None:
                continue
            worker.join(5.0)
            if worker.is_alive():
                worker.terminate()
                worker.join(5.0)
            worker.close()

    def _any_dead(self) -> bool:
        return any(worker.pid is not None and not worker.is_alive() for worker, _ in self._workers)

    def _errors_so_far(self) -> str:
        found = []
        for pipe in self._pipes:
            if pipe.poll(0):
                try:
                    _, payload = pipe.recv()
                except EOFError:
                    continue
                found.append(str(payload))
        return f" ({'; '.join(found)})" if found else ""

    def __enter__(self) -> ClientProcesses:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _receive(connection: Connection, timeout: float) -> tuple[str, Any]:
    if not connection.poll(timeout):
        return "error", f"a client process sent no result within {timeout:.0f} s"
    try:
        result: tuple[str, Any] = connection.recv()
    except EOFError:
        return "error", "a client process ended without a result"
    return result
