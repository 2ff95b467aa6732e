"""The Exchange interface: what the connector needs from the one exchange it is connected to.

An adapter holds ONE connection to its exchange. Streams follow the spec's shape
(`StartAccountStream(ctx, callback) error`, here `run_account_stream(callback)`): the coroutine delivers every update to `callback`
in order and runs until it is cancelled (then it raises CancelledError) or the exchange fails
(then it raises ExchangeError).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from opensqt.exchange.v1 import exchange_pb2 as pb

AccountCallback = Callable[[pb.Account], None]
PositionCallback = Callable[[pb.Position], None]


@runtime_checkable
class Exchange(Protocol):
    async def connect(self) -> None:
        """Open the one upstream connection; raises ExchangeUnavailable when it cannot."""

    async def close(self) -> None:
        """Close the upstream connection; closing twice is harmless."""

    async def get_account(self) -> pb.Account:
        """The current account."""

    async def get_positions(self, symbol: str = "") -> list[pb.Position]:
        """The open positions, of one symbol or (empty) all."""

    async def run_account_stream(self, callback: AccountCallback) -> None:
        """Deliver every account update to `callback` until cancelled or failed."""

    async def run_position_stream(self, callback: PositionCallback) -> None:
        """Deliver every position update (all symbols) to `callback` until cancelled or failed."""
