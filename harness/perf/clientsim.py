"""Simulated clients of the connector for the load and soak levels, on the raw generated stubs.

A "market_maker-like" client holds an account stream and a position stream (harness.perf.stream_reader:
reopened by the harness when they break, with the same backoff for every SUT) and, once they are
open, reads the account and the positions once, as market_maker does when it starts. A
"live_server-like" client does the same and also polls GetAccount and GetPositions every
`poll_interval` seconds, as live_server does when its HTTP API and dashboard are read. No
implementation's client library is involved: every SUT is measured with the same client. Each
delivery's end-to-end latency (harness.perf.loadgen tags) and every sequence gap is seen exactly.
They run in the test process (the soak and memory levels) or in worker processes of their own (the
load level: harness.perf.loadworker, which keeps each sample with keep_samples=True so they can be
sent back).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.loadgen import SequenceTracker
from harness.perf.probes import LatencyRecorder
from harness.perf.stream_reader import ReconnectingStream
from harness.tagged_updates import PRIMING_RUN, account_tag, position_tag, tagged_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

KINDS = ("market_maker", "live_server")
CALL_TIMEOUT_S = 5.0
DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # the contract's decimal strings (proto comments)
ACCOUNT_DECIMALS = ("total_balance", "available_balance", "equity", "unrealized_pnl", "margin_used",
                    "margin_level", "leverage")  # fmt: skip


def valid_account(account: pb.Account) -> bool:
    return all(DECIMAL.fullmatch(getattr(account, name)) for name in ACCOUNT_DECIMALS)


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
        self.address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ExchangeServiceAsyncStub | None = None
        self.invalid = 0
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
        self._streams: list[ReconnectingStream] = []
        self._poller: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, open both streams, read the state once. Whether the streams are registered with the
        connector is for prime() to find out: it sends updates until every client got one."""
        self._channel = grpc.aio.insecure_channel(self.address)
        await asyncio.wait_for(self._channel.channel_ready(), timeout)
        stub = self._stub = pb_grpc.ExchangeServiceStub(self._channel)
        self._streams = [
            ReconnectingStream(f"{self.name} account", lambda: stub.SubscribeAccount(pb.SubscribeAccountRequest()),
                               self._on_account).start(),
            ReconnectingStream(f"{self.name} positions",
                               lambda: stub.SubscribePositions(pb.SubscribePositionsRequest(symbol="")),
                               self._on_position).start(),
        ]  # fmt: skip
        await self._read_state()
        if self.kind == "live_server":
            self._poller = asyncio.create_task(self._poll(), name=f"{self.name} poller")

    async def _read_state(self) -> None:
        assert self._stub is not None
        await self._stub.GetAccount(pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S)
        await self._stub.GetPositions(pb.GetPositionsRequest(), timeout=CALL_TIMEOUT_S)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for stream in self._streams:
            await stream.stop()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

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
        if not valid_account(account):
            self.invalid += 1
        self._record(received_ns - account.updated_at.ToNanoseconds())
        self.accounts.observe(tag[1])

    def _on_position(self, position: pb.Position) -> None:
        received_ns = time.time_ns()
        tag = position_tag(position)
        if tag is None or tag[0] != self.run:
            return
        if not DECIMAL.fullmatch(position.size):
            self.invalid += 1
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
            assert self._stub is not None
            try:
                started = time.perf_counter_ns()
                await self._stub.GetAccount(pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S)
                elapsed_ns = time.perf_counter_ns() - started
                if self.keep_samples:
                    self.poll_samples_us.append(elapsed_ns // 1000)
                await self._stub.GetPositions(pb.GetPositionsRequest(), timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError:  # counted: the soak's error rate, the load test's failure message
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
            stream_errors=sum(stream.counts.breaks for stream in self._streams),
            reconnects=sum(stream.counts.reopens for stream in self._streams),
            invalid=self.invalid,
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
