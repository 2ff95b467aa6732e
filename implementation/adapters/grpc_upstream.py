"""GrpcExchange: the `grpc` adapter, whose upstream is another ExchangeService at an address.

This is how a connector running as a program reaches the harness's mock exchange, and it lets
connectors chain. It holds one RemoteExchange (one channel, one connection) and one plain
subscription per stream: no reconnecting here, because the hub owns recovery (it ends its
subscribers' streams, backs off and subscribes again), and no validation either, because the
hub validates every update and logs what it drops.

The channel keeps its connection alive: an HTTP/2 ping after `keepalive` seconds of silence, and
the connection is closed (the streams fail, the hub reconnects) when the ping goes unanswered for
`keepalive_timeout` seconds: a peer that vanished or froze without closing its socket is found.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from implementation.adapters.interface import AccountCallback, PositionCallback
from implementation.client_library.remote_exchange import RemoteExchange
from implementation.contract.errors import ExchangeUnavailable
from opensqt.exchange.v1 import exchange_pb2 as pb

# The keepalive of the upstream channel: an HTTP/2 ping after this much silence on the connection,
# and the connection is closed when the ping is not answered in time.
UPSTREAM_KEEPALIVE_S = 10.0
UPSTREAM_KEEPALIVE_TIMEOUT_S = 5.0


def keepalive_options(keepalive: float, timeout: float) -> list[tuple[str, Any]]:
    """Channel options that ping a silent connection and close it when the ping is not answered."""
    return [
        ("grpc.keepalive_time_ms", max(1, int(keepalive * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, int(timeout * 1000))),
        ("grpc.http2.max_pings_without_data", 0),  # a quiet market sends no data: keep pinging anyway
        ("grpc.keepalive_permit_without_calls", 0),  # the hub always holds its two streams
    ]


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
        keepalive: float = UPSTREAM_KEEPALIVE_S,
        keepalive_timeout: float = UPSTREAM_KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self._remote = RemoteExchange(
            address,
            channel_options=keepalive_options(keepalive, keepalive_timeout),
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
            logger=logger or logging.getLogger("implementation.adapters.grpc_upstream"),
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

    # Each stream is one read loop straight into the hub's callback (RemoteExchange.relay_*): every
    # update passes here, so no async generator or iterator sits in between.
    async def run_account_stream(self, callback: AccountCallback) -> None:
        await self._remote.relay_account(callback)
        raise self._ended("SubscribeAccount")

    async def run_position_stream(self, callback: PositionCallback) -> None:
        await self._remote.relay_positions(callback, "")
        raise self._ended("SubscribePositions")

    def _ended(self, method: str) -> ExchangeUnavailable:
        return ExchangeUnavailable(f"the upstream at {self.address} ended the {method} stream")


__all__ = ["GrpcExchange"]
