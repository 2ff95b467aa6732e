"""Simulated clients of the connector for the load and soak levels, built on the real client library.

A "market_maker-like" client holds an account stream and a position stream (RemoteExchange
StreamHandles, reconnecting by themselves) and, once they are subscribed, reads the account and the
positions once, as market_maker does when it starts. A "live_server-like" client does the same
and also polls GetAccount and GetPositions every `poll_interval` seconds, as live_server does when
its HTTP API and dashboard are read. Each delivery's end-to-end latency
(harness.perf.loadgen tags) and every sequence gap is seen exactly. They run in the test process (the
soak and memory levels) or in worker processes of their own (the load level: harness.perf.loadworker,
which keeps each sample with keep_samples=True so they can be sent back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.loadgen import PRIMING_RUN, SequenceTracker, account_tag, position_tag, tagged_account
from harness.perf.probes import LatencyRecorder
from implementation.exchange.remote import RemoteExchange
from implementation.exchange.remote_stream import StreamHandle
from opensqt.exchange.v1 import exchange_pb2 as pb

KINDS = ("market_maker", "live_server")
_QUIET = logging.getLogger("harness.perf.clientsim.remote")
_QUIET.setLevel(logging.WARNING)  # thousands of stream events would flood the captured log


@dataclass
class ClientCounts:
    """A client's figures since it started (or since reset_interval() for the interval_* ones)."""

    account_received: int = 0
    position_received: int = 0
    lost: int = 0
    reordered: int = 0
    duplicates: int = 0
    poll_calls: int = 0
    poll_errors: int = 0
    stream_errors: int = 0
    reconnects: int = 0
    invalid: int = 0


class SimulatedClient:
    """One client of the connector; start(), then stop() (or `async with`)."""

    def __init__(
        self,
        address: str,
        kind: str,
        *,
        run: int,
        position_sent_ns: Mapping[int, int] | None = None,
        poll_interval: float = 1.0,
        first_seq: int | None = 1,
        name: str = "",
        keep_samples: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"client kind {kind!r} is not one of {', '.join(KINDS)}")
        self.kind, self.run, self.name = kind, run, name or kind
        self.exchange = RemoteExchange(address, connect_timeout=10.0, call_timeout=5.0, logger=_QUIET)
        self.poll_interval = poll_interval
        self.accounts = SequenceTracker(first_seq)
        self.positions = SequenceTracker(first_seq)
        self.interval_latency = LatencyRecorder(f"{self.name} updates (interval)")
        # keep_samples: every latency in microseconds, in arrival order, for the receiver to
        # summarise, instead of the interval recorder (which then stays empty): one append per
        # delivery is all the measuring a loaded client process pays
        self.keep_samples = keep_samples
        self.samples_us = array("q")
        self.poll_samples_us = array("q")
        self.primed = asyncio.Event()
        self.poll_calls = 0
        self.poll_errors = 0
        self._position_sent_ns = position_sent_ns or {}
        self._handles: list[StreamHandle[pb.Account] | StreamHandle[pb.Position]] = []
        self._poller: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        await self.exchange.connect()
        self._handles = [
            self.exchange.start_account_stream(self._on_account),
            self.exchange.start_position_stream("", self._on_position),
        ]
        for handle in self._handles:
            if not await handle.wait_connected(timeout):
                raise TimeoutError(f"{self.name}: {handle.name} stream not subscribed within {timeout} s")
        # Once subscribed, read the whole state once, as both programs do when they start.
        await self.exchange.get_account()
        await self.exchange.get_positions()
        if self.kind == "live_server":
            self._poller = asyncio.create_task(self._poll(), name=f"{self.name} poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.exchange.close()  # cancels both stream handles

    async def __aenter__(self) -> SimulatedClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_account(self, account: pb.Account) -> None:
        received_ns = time.time_ns()
        tag = account_tag(account)
        if tag is None or tag[0] != self.run:
            if tag is not None and tag[0] == PRIMING_RUN:
                self.primed.set()
            return
        self._record(received_ns - account.updated_at.ToNanoseconds())
        self.accounts.observe(tag[1])

    def _on_position(self, position: pb.Position) -> None:
        received_ns = time.time_ns()
        tag = position_tag(position)
        if tag is None or tag[0] != self.run:
            return
        sent_ns = self._position_sent_ns.get(tag[1])
        if sent_ns is not None:
            self._record(received_ns - sent_ns)
        self.positions.observe(tag[1])

    def _record(self, elapsed_ns: int) -> None:
        if self.keep_samples:
            self.samples_us.append(elapsed_ns // 1000)
        else:
            self.interval_latency.record_ns(elapsed_ns)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll_calls += 1
            try:
                started = time.perf_counter_ns()
                await self.exchange.get_account()
                elapsed_ns = time.perf_counter_ns() - started
                if self.keep_samples:
                    self.poll_samples_us.append(elapsed_ns // 1000)
                await self.exchange.get_positions()
            except Exception:  # counted: the soak's error rate, the load test's failure message
                self.poll_errors += 1

    def reset_interval(self) -> LatencyRecorder:
        """The update latencies since the last reset; starts a new interval."""
        finished, self.interval_latency = (
            self.interval_latency,
            LatencyRecorder(f"{self.name} updates (interval)"),
        )
        return finished

    def counts(self, accounts_sent: int | None = None, positions_sent: int | None = None) -> ClientCounts:
        """Figures so far; lost counts up to the numbers sent when given (else up to the highest seen)."""
        return ClientCounts(
            account_received=self.accounts.received,
            position_received=self.positions.received,
            lost=self.accounts.lost(accounts_sent) + self.positions.lost(positions_sent),
            reordered=self.accounts.reordered + self.positions.reordered,
            duplicates=self.accounts.duplicates + self.positions.duplicates,
            poll_calls=self.poll_calls,
            poll_errors=self.poll_errors,
            stream_errors=sum(handle.errors for handle in self._handles),
            reconnects=sum(handle.reconnects for handle in self._handles),
            invalid=sum(handle.invalid for handle in self._handles),
        )


def make_clients(
    address: str, market_makers: int, live_servers: int, *, run: int, **options: object
) -> list[SimulatedClient]:
    kinds = ["market_maker"] * market_makers + ["live_server"] * live_servers
    return [
        SimulatedClient(address, kind, run=run, name=f"{kind}-{index}", **options)  # type: ignore[arg-type]
        for index, kind in enumerate(kinds)
    ]


async def start_all(clients: Sequence[SimulatedClient], timeout: float = 15.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(client.start() for client in clients)), timeout)


async def prime(mock: MockExchangeServer, clients: Sequence[SimulatedClient], timeout: float = 15.0) -> None:
    """Send priming account updates until every client got one: all are registered with the connector."""
    deadline = time.monotonic() + timeout
    seq = 0
    while not all(client.primed.is_set() for client in clients):
        if time.monotonic() > deadline:
            waiting = [client.name for client in clients if not client.primed.is_set()]
            raise TimeoutError(
                f"{len(waiting)} of {len(clients)} clients got no account update within {timeout} s of "
                f"subscribing ({', '.join(waiting[:5])}): expected the connector to forward each update to all"
            )
        seq += 1
        mock.trigger_account_update(tagged_account(PRIMING_RUN, seq))
        await asyncio.sleep(0.02)


async def wait_delivered(
    clients: Sequence[SimulatedClient], accounts: int, positions: int = 0, timeout: float = 10.0
) -> bool:
    """True once every client has the account and position updates up to those numbers (False on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.accounts.received >= accounts and c.positions.received >= positions for c in clients):
            return True
        await asyncio.sleep(0.05)
    return False


async def stop_all(clients: Sequence[SimulatedClient]) -> None:
    await asyncio.gather(*(client.stop() for client in clients), return_exceptions=True)
