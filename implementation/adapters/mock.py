"""MockExchange: the spec's controllable exchange (§4.3), for tests and the `mock` adapter.

Streams follow the spec's Go mock: run_account_stream(callback) registers the callback and blocks
until cancelled; trigger_account_update(account) calls every registered callback at once. On top
of the spec it keeps the state the unary calls return (a trigger updates it too), counts
connect() calls, fails on demand (fail_with(error) makes every call raise `error` and ends the
running streams with it, until fail_with(None)) and answers slowly on demand (hold_calls() makes
the unary calls wait until release_calls()). Use it from the event loop's own thread.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Iterable
from typing import TypeVar

from implementation.adapters.interface import AccountCallback, PositionCallback
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb

C = TypeVar("C", AccountCallback, PositionCallback)


class MockExchange:
    """An in-process Exchange whose data, updates and failures the test controls."""

    def __init__(
        self, account: pb.Account | None = None, positions: Iterable[pb.Position] | None = None
    ) -> None:
        self.account = account if account is not None else spec_account()
        self.positions = list(positions) if positions is not None else spec_positions()
        self.connections = 0  # successful connect() calls
        self.closed = False
        self.calls: Counter[str] = Counter()  # every call by method name, failed ones included
        self._account_callbacks: list[AccountCallback] = []
        self._position_callbacks: list[PositionCallback] = []
        self._failure: BaseException | None = None
        self._wakers: set[asyncio.Future[None]] = set()
        self._released: asyncio.Event | None = None  # set: calls answer; unset: they wait

    # ------------------------------------------------------------------ control

    def trigger_account_update(self, account: pb.Account) -> None:
        """Deliver `account` to every registered account callback; get_account returns it from now on."""
        self.account = account
        for callback in list(self._account_callbacks):
            callback(account)

    def trigger_position_update(self, position: pb.Position) -> None:
        """Deliver `position` to every registered position callback; it replaces that symbol's position."""
        kept = [p for p in self.positions if p.symbol != position.symbol]
        if len(kept) == len(self.positions):
            self.positions.append(position)
        else:
            self.positions = [position if p.symbol == position.symbol else p for p in self.positions]
        for callback in list(self._position_callbacks):
            callback(position)

    def set_account(self, account: pb.Account) -> None:
        """What get_account returns from now on (no update is delivered)."""
        self.account = account

    def set_positions(self, positions: Iterable[pb.Position]) -> None:
        """What get_positions returns from now on (no update is delivered)."""
        self.positions = list(positions)

    def hold_calls(self) -> None:
        """From now on get_account/get_positions wait (a slow exchange) until release_calls()."""
        if self._released is None or self._released.is_set():
            self._released = asyncio.Event()

    def release_calls(self) -> None:
        """Let the held calls, and every later one, answer."""
        if self._released is not None:
            self._released.set()

    def fail_with(self, error: BaseException | None) -> None:
        """From now on every call raises `error` and running streams end with it; None: work again."""
        self._failure = error
        if error is not None:
            for waker in self._wakers:
                if not waker.done():
                    waker.set_result(None)

    # ------------------------------------------------------------------ observation

    @property
    def account_streams(self) -> int:
        """Account streams running right now."""
        return len(self._account_callbacks)

    @property
    def position_streams(self) -> int:
        """Position streams running right now."""
        return len(self._position_callbacks)

    # ------------------------------------------------------------------ the Exchange interface

    async def connect(self) -> None:
        self._call("connect")
        self.connections += 1
        self.closed = False

    async def close(self) -> None:
        self.calls["close"] += 1
        self.closed = True

    async def get_account(self) -> pb.Account:
        self._call("get_account")
        await self._held()
        return self.account

    async def get_positions(self, symbol: str = "") -> list[pb.Position]:
        self._call("get_positions")
        await self._held()
        return [p for p in self.positions if not symbol or p.symbol == symbol]

    async def run_account_stream(self, callback: AccountCallback) -> None:
        self._call("run_account_stream")
        await self._serve(self._account_callbacks, callback)

    async def run_position_stream(self, callback: PositionCallback) -> None:
        self._call("run_position_stream")
        await self._serve(self._position_callbacks, callback)

    # ------------------------------------------------------------------ internals

    def _call(self, method: str) -> None:
        self.calls[method] += 1
        self._raise_if_failing()

    async def _held(self) -> None:
        if self._released is not None and not self._released.is_set():
            await self._released.wait()
            self._raise_if_failing()

    def _raise_if_failing(self) -> None:
        if self._failure is not None:
            raise copy.copy(self._failure)  # a fresh instance: one raise, one traceback

    async def _serve(self, callbacks: list[C], callback: C) -> None:
        """Keep `callback` registered until cancelled (CancelledError) or told to fail (the error)."""
        callbacks.append(callback)
        try:
            while True:
                waker = asyncio.get_running_loop().create_future()
                self._wakers.add(waker)
                try:
                    await waker
                finally:
                    self._wakers.discard(waker)
                self._raise_if_failing()
        finally:
            callbacks.remove(callback)


__all__ = ["MockExchange"]
