"""GrpcExchange: the `grpc` adapter, whose upstream is another ExchangeService at an address.

This is how a connector running as a program reaches the harness's mock exchange, and it lets
connectors chain. It holds one RemoteExchange (one channel, one connection) and one plain
subscription per stream: no reconnecting here, because the hub owns recovery (it ends its
subscribers' streams, backs off and subscribes again), and no validation either, because the
hub validates every update and logs what it drops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

from implementation._pb import exchange_pb2 as pb
from implementation.exchange.base import AccountCallback, PositionCallback
from implementation.exchange.errors import ExchangeUnavailable
from implementation.exchange.remote import RemoteExchange

T = TypeVar("T")


class GrpcExchange:
    """An Exchange backed by the ExchangeService at `address` (options as for RemoteExchange)."""

    def __init__(
        self,
        address: str,
        *,
        connect_timeout: float = 5.0,
        call_timeout: float | None = 10.0,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._remote = RemoteExchange(
            address,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
            logger=logger or logging.getLogger("implementation.exchange.upstream"),
        )

    @property
    def address(self) -> str:
        return self._remote.address

    async def connect(self) -> None:
        await self._remote.connect()

    async def close(self) -> None:
        await self._remote.close()

    async def get_account(self) -> pb.Account:
        return await self._remote.get_account()

    async def get_positions(self, symbol: str = "") -> list[pb.Position]:
        return await self._remote.get_positions(symbol)

    async def run_account_stream(self, callback: AccountCallback) -> None:
        await self._relay("SubscribeAccount", self._remote.subscribe_account(), callback)

    async def run_position_stream(self, callback: PositionCallback) -> None:
        await self._relay("SubscribePositions", self._remote.subscribe_positions(""), callback)

    async def _relay(self, method: str, updates: AsyncIterator[T], callback: Callable[[T], object]) -> None:
        """Every message of one subscription to `callback`; an error when the subscription ends."""
        if isinstance(updates, AsyncGenerator):
            async with aclosing(updates):
                async for message in updates:
                    callback(message)
        else:
            async for message in updates:
                callback(message)
        raise ExchangeUnavailable(f"the upstream at {self.address} ended the {method} stream")


__all__ = ["GrpcExchange"]
