"""SimExchange: a simulated exchange that moves on its own, so the stack runs with no account.

Every `interval` seconds each symbol's mark price takes a small random step; the positions'
unrealized PnL and the account (equity, available balance, margin level, leverage) follow, and
one account update plus one update per position are delivered. The values depend only on the
seed and the number of steps (the clock only stamps `updated_at`), and every amount is a decimal
string computed with Decimal, never a float rendering.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from implementation.adapters.interface import AccountCallback, PositionCallback
from implementation.contract.errors import ExchangeUnavailable, InvalidRequest
from implementation.contract.validation import check_symbol
from opensqt.exchange.v1 import exchange_pb2 as pb

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
WALLET_BALANCE = Decimal("20000.00")
MAINTENANCE_MARGIN = Decimal("0.005")
STEP_VOLATILITY = 0.001  # standard deviation of one step's relative price move
CENT = Decimal("0.01")


@dataclass
class _Holding:
    symbol: str
    side: str
    size: Decimal
    entry: Decimal
    mark: Decimal
    leverage: Decimal
    margin_type: str


# Known instruments start like the spec's §8 data; any other symbol gets a generic position.
_STARTS = {
    "BTCUSDT": ("LONG", "0.5", "40000.00", "41000.00", "10", "ISOLATED"),
    "ETHUSDT": ("SHORT", "10.0", "3000.00", "2900.00", "5", "CROSS"),
    "SOLUSDT": ("LONG", "20", "150.00", "152.50", "5", "CROSS"),
}
_GENERIC = ("LONG", "1", "100.00", "100.00", "5", "CROSS")
_C = TypeVar("_C", AccountCallback, PositionCallback)


def _money(value: Decimal) -> str:
    rounded = value.quantize(CENT)
    return format(rounded if rounded != 0 else abs(rounded), "f")  # never "-0.00"


class SimExchange:
    """An Exchange that invents its own updates: deterministic given `seed`.

    `interval` seconds between steps once connected; None moves only when step() is called."""

    def __init__(
        self,
        *,
        seed: int = 0,
        interval: float | None = 1.0,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"interval must be > 0 s (or None for manual steps), got {interval}")
        if not symbols:
            raise ValueError("symbols must name at least one instrument")
        for symbol in symbols:
            if not symbol:
                raise ValueError("symbols must not contain an empty name")
            try:
                check_symbol(symbol)
            except InvalidRequest as exc:
                raise ValueError(str(exc)) from None
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"symbols must be distinct, got {list(symbols)}")
        self.interval = interval
        self.steps = 0
        self._rng = random.Random(seed)
        self._clock = clock
        self._holdings = [self._start(symbol) for symbol in symbols]
        self._account_callbacks: list[AccountCallback] = []
        self._position_callbacks: list[PositionCallback] = []
        self._ticker: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None
        self.connections = 0

    @staticmethod
    def _start(symbol: str) -> _Holding:
        side, size, entry, mark, leverage, margin_type = _STARTS.get(symbol, _GENERIC)
        return _Holding(
            symbol, side, Decimal(size), Decimal(entry), Decimal(mark), Decimal(leverage), margin_type
        )

    # ------------------------------------------------------------------ the simulation

    def step(self) -> None:
        """Move every mark price one random step and deliver the new account and positions."""
        self.steps += 1
        for holding in self._holdings:
            move = Decimal(repr(round(self._rng.gauss(0.0, STEP_VOLATILITY), 6)))
            holding.mark = max(CENT, (holding.mark * (1 + move)).quantize(CENT))
        account = self.account()
        positions = self.positions()
        for account_callback in list(self._account_callbacks):
            account_callback(account)
        for position in positions:
            for position_callback in list(self._position_callbacks):
                position_callback(position)

    def positions(self, symbol: str = "") -> list[pb.Position]:
        """The positions now (of `symbol`, or all)."""
        return [self._position(h) for h in self._holdings if not symbol or h.symbol == symbol]

    def account(self) -> pb.Account:
        """The account now."""
        pnl = sum((self._pnl(h) for h in self._holdings), Decimal(0))
        margin = sum((h.entry * h.size / h.leverage for h in self._holdings), Decimal(0))
        notional = sum((h.mark * h.size for h in self._holdings), Decimal(0))
        equity = WALLET_BALANCE + pnl
        stamp = Timestamp()
        stamp.FromNanoseconds(int(self._clock() * 1e9))
        return pb.Account(
            total_balance=_money(WALLET_BALANCE),
            available_balance=_money(max(Decimal(0), equity - margin)),
            equity=_money(equity),
            unrealized_pnl=_money(pnl),
            margin_used=_money(margin),
            margin_level=_money(equity / margin * 100 if margin > 0 else Decimal(0)),
            leverage=_money(notional / equity if equity > 0 else Decimal(0)),
            updated_at=stamp,
        )

    @staticmethod
    def _pnl(holding: _Holding) -> Decimal:
        change = holding.mark - holding.entry
        return change * holding.size if holding.side == "LONG" else -change * holding.size

    def _position(self, holding: _Holding) -> pb.Position:
        cushion = 1 / holding.leverage - MAINTENANCE_MARGIN
        liquidation = holding.entry * (1 - cushion if holding.side == "LONG" else 1 + cushion)
        return pb.Position(
            symbol=holding.symbol,
            side=holding.side,
            size=format(holding.size, "f"),
            entry_price=_money(holding.entry),
            mark_price=_money(holding.mark),
            leverage=format(holding.leverage, "f"),
            unrealized_pnl=_money(self._pnl(holding)),
            liquidation=_money(liquidation),
            margin_type=holding.margin_type,
        )

    async def _tick(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.step()

    # ------------------------------------------------------------------ the Exchange interface

    async def connect(self) -> None:
        self.connections += 1
        self._closed = asyncio.Event()
        if self._ticker is None and self.interval is not None:
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(self.interval), name="sim-ticker"
            )

    async def close(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        if self._closed is not None:
            self._closed.set()

    async def get_account(self) -> pb.Account:
        return self.account()

    async def get_positions(self, symbol: str = "") -> list[pb.Position]:
        return self.positions(symbol)

    async def run_account_stream(self, callback: AccountCallback) -> None:
        await self._serve(self._account_callbacks, callback)

    async def run_position_stream(self, callback: PositionCallback) -> None:
        await self._serve(self._position_callbacks, callback)

    async def _serve(self, callbacks: list[_C], callback: _C) -> None:
        closed = self._closed
        if closed is None or closed.is_set():
            raise ExchangeUnavailable("the simulated exchange is not connected")
        callbacks.append(callback)
        try:
            await closed.wait()
        finally:
            callbacks.remove(callback)
        raise ExchangeUnavailable("the simulated exchange was closed")


__all__ = ["DEFAULT_SYMBOLS", "SimExchange"]
