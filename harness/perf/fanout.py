"""Stream benchmarks: N raw-stub subscribers of SubscribeAccount, measured the same way for every target.

A run sends `count` tagged updates (harness.perf.loadgen) at a paced rate, or as fast as the path
sustains; each subscriber checks it got every one in order and keeps each update's end-to-end
latency. Where the updates come from is the only thing that differs between targets:

* ``BaselineSource``: the bare baseline writes them itself; the plan travels in request metadata.
* ``MockExchangeSource``: a thread triggers them on the harness's mock exchange, the connector's
  upstream. Before the measured run it sends priming updates until every subscriber has got one,
  so no update is sent before the connector has registered all subscribers.

By default the subscribers run in a separate process (harness.perf.streamworker): the mock exchange
lives in the test process, and a mock exchange and its subscribers sharing one interpreter lock
cost several times what each costs alone, which would measure the harness instead of the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from harness.doubles.baseline import StreamPlan
from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.loadgen import PacingReport, SequenceTracker, Window, run_paced, run_windowed
from harness.perf.probes import LatencyRecorder
from harness.tagged_updates import PRIMING_RUN, account_tag, tagged_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

WINDOW = 256  # updates in flight when sending "as fast as the path sustains"; below any sane queue bound


class AccountSubscriber:
    """One SubscribeAccount stream on its own channel (its own connection, like a separate client)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        plan: StreamPlan,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        window: Window | None = None,
        on_primed: Callable[[], object] | None = None,
    ) -> None:
        self._stub = pb_grpc.ExchangeServiceStub(channel)
        self.plan = plan
        self._metadata = tuple(metadata)
        self._window = window
        self._on_primed = on_primed
        self.primed = False
        self.tracker = SequenceTracker(1)
        self.latencies_us = array("q")  # appended per update: far cheaper than a histogram insert
        self.other = 0  # messages that were not of this run (priming, a first snapshot)
        self.status = "open"
        self.details = ""
        self.first_sent_ns = 0
        self.last_received_ns = 0

    async def run(self) -> None:
        """Read until every update of the plan arrived, the stream ends, or the task is cancelled."""
        call = self._stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=self._metadata)
        try:
            async for account in call:
                if self._take(account):
                    self.status = "complete"
                    break
            else:
                self.status = "ended"
        except grpc.aio.AioRpcError as error:
            self.status, self.details = error.code().name, error.details() or ""
        finally:
            call.cancel()

    def _take(self, account: pb.Account) -> bool:
        received_ns = time.time_ns()
        tag = account_tag(account)
        if tag is None or tag[0] != self.plan.run:
            self.other += 1
            if tag is not None and tag[0] == PRIMING_RUN and not self.primed:
                self.primed = True
                if self._on_primed is not None:
                    self._on_primed()
            return False
        sent_ns = account.updated_at.ToNanoseconds()
        self.latencies_us.append((received_ns - sent_ns) // 1000)
        if not self.first_sent_ns:
            self.first_sent_ns = sent_ns
        self.last_received_ns = received_ns
        self.tracker.observe(tag[1])
        if self._window is not None:
            self._window.release()
        return self.tracker.received >= self.plan.count


@dataclass
class SubscriberReport:
    """What one subscriber saw; plain data, so it crosses a process boundary."""

    status: str
    details: str
    received: int
    lost: int
    reordered: int
    duplicates: int
    missing: list[int]
    first_sent_ns: int
    last_received_ns: int
    latencies_us: bytes  # array("q") of microseconds

    @classmethod
    def of(cls, subscriber: AccountSubscriber, count: int) -> SubscriberReport:
        tracker = subscriber.tracker
        return cls(
            status=subscriber.status,
            details=subscriber.details,
            received=tracker.received,
            lost=tracker.lost(count),
            reordered=tracker.reordered,
            duplicates=tracker.duplicates,
            missing=tracker.missing(count, 5),
            first_sent_ns=subscriber.first_sent_ns,
            last_received_ns=subscriber.last_received_ns,
            latencies_us=subscriber.latencies_us.tobytes(),
        )


async def collect(
    address: str,
    plan: StreamPlan,
    subscribers: int,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    window: Window | None = None,
    on_primed: Callable[[], object] | None = None,
    timeout: float = 60.0,
) -> list[SubscriberReport]:
    """Subscribe `subscribers` times and read until each got the whole plan or `timeout` passed.

    Only the first subscriber releases `window` (it paces a one-subscriber run). Every channel and
    task is closed before returning.
    """
    channels = [grpc.aio.insecure_channel(address) for _ in range(subscribers)]
    readers = [
        AccountSubscriber(ch, plan, metadata=metadata, window=window if i == 0 else None, on_primed=on_primed)
        for i, ch in enumerate(channels)
    ]
    tasks = [asyncio.create_task(reader.run(), name=f"subscriber-{i}") for i, reader in enumerate(readers)]
    try:
        await asyncio.wait(tasks, timeout=timeout)  # what did not arrive in time counts as lost
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in channels))
    return [SubscriberReport.of(reader, plan.count) for reader in readers]


class UpdateSource(Protocol):
    """Where a target's updates come from."""

    def metadata(self, plan: StreamPlan) -> tuple[tuple[str, str], ...]: ...

    async def prepare(self, primed: Callable[[], int], subscribers: int, timeout: float) -> None: ...

    async def generate(
        self, plan: StreamPlan, window: Window | None, stop: threading.Event
    ) -> PacingReport | None: ...


class BaselineSource:
    """The bare baseline writes the updates itself, as the plan in the request metadata says."""

    def metadata(self, plan: StreamPlan) -> tuple[tuple[str, str], ...]:
        return plan.metadata()

    async def prepare(self, primed: Callable[[], int], subscribers: int, timeout: float) -> None:
        return None  # the baseline starts a fan-out group's updates once all its members subscribed

    async def generate(
        self, plan: StreamPlan, window: Window | None, stop: threading.Event
    ) -> PacingReport | None:
        return None


class MockExchangeSource:
    """Updates triggered on the mock exchange from a dedicated thread (the connector's upstream)."""

    def __init__(self, mock: MockExchangeServer) -> None:
        self.mock = mock
        self._priming_seq = 0

    def metadata(self, plan: StreamPlan) -> tuple[tuple[str, str], ...]:
        return ()

    async def prepare(self, primed: Callable[[], int], subscribers: int, timeout: float) -> None:
        await self.mock.wait_for_subscriptions_async("account", 1, timeout)
        deadline = time.monotonic() + timeout
        while primed() < subscribers:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{subscribers - primed()} of {subscribers} subscribers got no update within {timeout} s "
                    "of subscribing: expected the connector to forward every upstream update to each"
                )
            self._priming_seq += 1
            self.mock.trigger_account_update(tagged_account(PRIMING_RUN, self._priming_seq))
            # each priming update goes to every subscriber already registered: with many, prime
            # less often, or the priming itself is the load that keeps the rest from subscribing
            await asyncio.sleep(min(2.0, 0.02 * max(1.0, subscribers / 50)))

    async def generate(
        self, plan: StreamPlan, window: Window | None, stop: threading.Event
    ) -> PacingReport | None:
        def send(seq: int) -> None:
            self.mock.trigger_account_update(tagged_account(plan.run, seq))

        if window is not None:
            return await asyncio.to_thread(run_windowed, send, count=plan.count, window=window, stop=stop)
        return await asyncio.to_thread(run_paced, send, rate=plan.rate, count=plan.count, stop=stop)


@dataclass
class StreamRun:
    """What a stream benchmark measured over all its subscribers."""

    subscribers: int
    planned: int  # updates each subscriber had to get
    received: int
    lost: int
    duplicates: int
    reordered: int
    elapsed_s: float  # first update's send stamp to the last receipt
    latency: LatencyRecorder
    statuses: dict[str, int] = field(default_factory=dict)
    pacing: PacingReport | None = None
    problems: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0  # CPU time of the subscribers' process during the run
    source_cpu_s: float = 0.0  # CPU time of this process (mock exchange, generator) during the run
    reports: list[SubscriberReport] = field(default_factory=list, repr=False)  # what each subscriber saw

    @property
    def deliveries_per_s(self) -> float:
        return self.received / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def figures(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_deliveries_per_s": self.deliveries_per_s,
            f"{prefix}_p50_ms": self.latency.p_ms(50) if self.latency.count else 0.0,
            f"{prefix}_p99_ms": self.latency.p_ms(99) if self.latency.count else 0.0,
            f"{prefix}_lost": float(self.lost),
        }


def summarise(
    reports: Sequence[SubscriberReport], plan: StreamPlan, pacing: PacingReport | None, client_cpu_s: float
) -> StreamRun:
    latency = LatencyRecorder("stream")
    statuses: dict[str, int] = {}
    problems: list[str] = []
    for index, report in enumerate(reports):
        statuses[report.status] = statuses.get(report.status, 0) + 1
        for microseconds in array("q", report.latencies_us):
            latency.record_us(microseconds)
        if report.lost or report.reordered or report.duplicates:
            problems.append(
                f"subscriber {index}: {report.lost} lost (first missing {report.missing}), "
                f"{report.reordered} reordered, {report.duplicates} duplicated; "
                f"stream {report.status} {report.details}".rstrip()
            )
    first_sent = min((r.first_sent_ns for r in reports if r.first_sent_ns), default=0)
    last_received = max((r.last_received_ns for r in reports), default=0)
    return StreamRun(
        subscribers=len(reports),
        planned=plan.count,
        received=sum(r.received for r in reports),
        lost=sum(r.lost for r in reports),
        duplicates=sum(r.duplicates for r in reports),
        reordered=sum(r.reordered for r in reports),
        elapsed_s=max(0.0, (last_received - first_sent) / 1e9),
        latency=latency,
        statuses=statuses,
        pacing=pacing,
        problems=problems,
        client_cpu_s=client_cpu_s,
        reports=list(reports),
    )


def combine(runs: Sequence[StreamRun]) -> StreamRun:
    """Blocks of one plan measured apart (interleaved with other targets', so each target sees the
    same host) as one run: counts and CPU summed, every block's latencies, and the blocks' own
    times added up, never the gaps between them."""
    if not runs:
        raise ValueError("combine needs at least one run")
    latency = LatencyRecorder("stream")
    statuses: dict[str, int] = {}
    for run in runs:
        for report in run.reports:
            for microseconds in array("q", report.latencies_us):
                latency.record_us(microseconds)
        for status, count in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    paced = [run.pacing for run in runs if run.pacing is not None]
    pacing = (
        PacingReport(
            sum(p.sent for p in paced), sum(p.elapsed_s for p in paced), max(p.max_lag_s for p in paced)
        )
        if paced
        else None
    )
    return StreamRun(
        subscribers=runs[0].subscribers,
        planned=sum(run.planned for run in runs),
        received=sum(run.received for run in runs),
        lost=sum(run.lost for run in runs),
        duplicates=sum(run.duplicates for run in runs),
        reordered=sum(run.reordered for run in runs),
        elapsed_s=sum(run.elapsed_s for run in runs),
        latency=latency,
        statuses=statuses,
        pacing=pacing,
        problems=[problem for run in runs for problem in run.problems],
        client_cpu_s=sum(run.client_cpu_s for run in runs),
        source_cpu_s=sum(run.source_cpu_s for run in runs),
        reports=[report for run in runs for report in run.reports],
    )
