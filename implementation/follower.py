"""Keeps a LiveState in step with the exchange connector, through outages and restarts.

The order of things is what makes the state exact:
1. both streams are subscribed first, and their callbacks hold every message back until the
   first full read (GetAccount + GetPositions) has been applied;
2. after a stream breaks and subscribes again, its on_reconnect hook reads everything again
   before the stream delivers anything new (the stream waits for the hook);
so every update the connector sends after a read is applied after that read, never before.
Two streams reconnecting at once share one read when they can: a read covers a subscription if
the subscription was already up when the read began. While any stream is down the state says
"not connected", with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import grpc

from implementation.client_library.remote_exchange import RemoteExchange, StreamHandle
from implementation.contract.errors import ExchangeError
from implementation.logs import log_event
from implementation.state import LiveState
from opensqt.exchange.v1 import exchange_pb2 as pb

Cause = Literal["start", "reconnect", "retry"]
StreamName = Literal["account", "positions"]
MONITOR_INTERVAL_S = 0.2
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0
NOT_READY_REPEAT_S = 10.0
RECONNECT_SETTLE_S = 0.05
PROBE_TIMEOUT_S = 2.0
PROBE_AFTER_S = 0.5
_RETRYABLE = (ExchangeError, grpc.aio.AioRpcError, OSError, asyncio.TimeoutError)


class StateFollower:
    def __init__(self, exchange: RemoteExchange, state: LiveState, *, logger: logging.Logger) -> None:
        self._exchange = exchange
        self._state = state
        self._log = logger
        self._synced = asyncio.Event()  # the first full read is applied; stream messages may flow
        self._resync_lock = asyncio.Lock()
        self._handles: dict[StreamName, StreamHandle[pb.Account] | StreamHandle[pb.Position]] = {}
        # Each stream's subscription number, and the numbers the last successful read covered.
        self._subscription: dict[StreamName, int] = {"account": 0, "positions": 0}
        self._covered: dict[StreamName, int] = {}
        self._retry_s = RETRY_INITIAL_S
        self._next_retry = 0.0
        self._not_ready_logged: tuple[str, float] | None = None
        self._down_since: float | None = None  # when the streams were first seen down
        self.resyncs = 0

    @property
    def address(self) -> str:
        return self._exchange.address

    async def run(self) -> None:
        """Connect, follow and recover, until cancelled. Never gives up on an unreachable connector."""
        loop = asyncio.get_running_loop()
        self._not_ready(f"connecting to the exchange connector at {self.address}")
        await self._connect()
        self._handles = {
            "account": self._exchange.start_account_stream(
                self._on_account, on_reconnect=lambda: self._on_reconnect("account")
            ),
            "positions": self._exchange.start_position_stream(
                "", self._on_position, on_reconnect=lambda: self._on_reconnect("positions")
            ),
        }
        while True:
            now = loop.time()
            if not all(handle.connected for handle in self._handles.values()):
                await self._streams_down(now)
            else:
                self._down_since = None
                if not self._state.connected and now >= self._next_retry:
                    # Streams are up but no read has succeeded since (first start, or a failed read).
                    await self._resync("retry" if self._synced.is_set() else "start")
            await asyncio.sleep(MONITOR_INTERVAL_S)

    async def stop(self) -> None:
        """Stop the streams and close the connection; no state change happens after this returns."""
        handles, self._handles = list(self._handles.values()), {}
        await asyncio.gather(*(handle.cancel() for handle in handles), return_exceptions=True)
        await self._exchange.close()

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> None:
        while True:
            try:
                await self._exchange.connect()
                return
            except _RETRYABLE as exc:
                self._not_ready(_reason(exc, self.address))
                await asyncio.sleep(self._backoff())

    async def _streams_down(self, now: float) -> None:
        """Say why the streams are down: the streams keep retrying by themselves, but only a call
        tells the cause (refused connection, a wrong token, ...); ask one now and then."""
        reason = (
            f"connection to the exchange connector at {self.address} lost; reconnecting"
            if self._synced.is_set()
            else f"subscribing to the exchange connector at {self.address}"
        )
        if self._down_since is None:
            self._down_since = now
        # A stream that is merely (re)subscribing is up within milliseconds: ask only after a while.
        if now - self._down_since >= PROBE_AFTER_S and now >= self._next_retry:
            self._backoff()
            try:
                await self._exchange.get_account(timeout=PROBE_TIMEOUT_S)
            except _RETRYABLE as exc:
                reason = f"{reason}: {_reason(exc, self.address)}"
        elif self._state.reason.startswith(reason):
            reason = self._state.reason  # keep the last known cause until the next probe
        self._not_ready(reason)

    def _backoff(self) -> float:
        delay = self._retry_s
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        self._next_retry = asyncio.get_running_loop().time() + delay
        return delay

    def _not_ready(self, reason: str) -> None:
        self._state.mark_disconnected(reason)
        now = asyncio.get_running_loop().time()
        last = self._not_ready_logged
        if last is None or last[0] != reason or now - last[1] >= NOT_READY_REPEAT_S:
            self._not_ready_logged = (reason, now)
            log_event(self._log, "not_ready", level=logging.WARNING, reason=reason, address=self.address)

    # ------------------------------------------------------------------ reading everything

    async def _on_reconnect(self, name: StreamName) -> None:
        # Runs in the same step in which the stream marked itself connected (no await before this
        # line), so a read that sees the stream connected knows this subscription number.
        self._subscription[name] += 1
        needed = {name: self._subscription[name]}
        if not all(handle.connected for handle in self._handles.values()):
            # The other stream is usually a moment behind (both wait for the same channel): let it
            # come up, so that one read covers both.
            await asyncio.sleep(RECONNECT_SETTLE_S)
        await self._resync("reconnect" if self._synced.is_set() else "start", needed=needed)

    async def _resync(self, cause: Cause, *, needed: dict[StreamName, int] | None = None) -> bool:
        async with self._resync_lock:
            if needed and self._state.connected and all(self._covered.get(k) == v for k, v in needed.items()):
                return True  # the read that just finished began after this subscription was up
            covering = {
                name: self._subscription[name] for name, handle in self._handles.items() if handle.connected
            }
            try:
                account = await self._exchange.get_account()
                positions = await self._exchange.get_positions()
            except _RETRYABLE as exc:
                self._not_ready(f"resynchronisation failed: {_reason(exc, self.address)}")
                self._backoff()
                return False
            self._covered = covering
            self._retry_s = RETRY_INITIAL_S
            self._not_ready_logged = None
            self.resyncs += 1
            first = not self._synced.is_set()
            self._state.resync(account, positions)
            self._synced.set()
            if not first:
                log_event(
                    self._log, "reconnect", address=self.address, cause=cause, positions=str(len(positions))
                )
            return True

    # ------------------------------------------------------------------ stream callbacks

    async def _on_account(self, account: pb.Account) -> None:
        await self._synced.wait()
        self._state.apply_account(account)

    async def _on_position(self, position: pb.Position) -> None:
        await self._synced.wait()
        self._state.apply_position(position)


def _reason(exc: BaseException, address: str) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"exchange connector at {address} did not answer in time"
    text = str(exc) or type(exc).__name__
    return text if address in text else f"{text} (exchange connector at {address})"
