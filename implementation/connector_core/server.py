"""ExchangeServer: the ExchangeService on grpc.aio, in front of one exchange and its broadcast hub.

Unary calls go to the exchange; streams are served from the hub, one `await context.write()` per
message with no extra task or hand-off. Exchange errors keep their meaning on the wire
(ExchangeUnavailable, InvalidData → UNAVAILABLE; InvalidRequest → INVALID_ARGUMENT). Also served:
grpc.health.v1 ("" and the service name: NOT_SERVING until the upstream is up, and while it is
down or the server drains), server reflection, an optional bearer token and TLS.

Shutdown: health NOT_SERVING first, new calls refused, every open stream ended with UNAVAILABLE
"shutting down", then up to `grace_period` seconds for calls in flight; whatever still runs is
cancelled, the port is released, the upstream subscriptions and the exchange are closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from implementation.adapters.interface import Exchange
from implementation.connector_core.auth import BearerTokenInterceptor
from implementation.connector_core.freshness import FreshnessPolicy
from implementation.connector_core.hub import (
    ACCOUNT,
    DEFAULT_QUEUE_SIZE,
    POSITIONS,
    SHUTTING_DOWN,
    Hub,
    SubscriptionEnded,
)
from implementation.connector_core.service_handlers import CallStats, add_service
from implementation.connector_core.shared_calls import SharedCalls
from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import ExchangeError, ExchangeUnavailable, InvalidData, InvalidRequest
from implementation.contract.tls import TlsServerConfig
from implementation.contract.validation import check_symbol, validate_account, validate_position
from implementation.logs import log_event
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
# Initial metadata of every GetAccount/GetPositions answer: how old the connector's view is, in
# whole milliseconds (0 for an answer the exchange has just given).
DATA_AGE_KEY = "x-opensqt-data-age-ms"
HEALTH_SERVICES = ("", SERVICE_NAME)
DEFAULT_MAX_CALLS = 10_000  # calls in flight (streams included) before new ones are refused
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.so_reuseport", 0),  # a port in use is an error, never silently shared
    ("grpc.keepalive_time_ms", 30_000),  # find subscribers whose host vanished without a FIN
    ("grpc.keepalive_timeout_ms", 10_000),
    # a burst of new calls waits in grpc's queue for the event loop to take it (rule C39) rather than
    # being cancelled once 1,000 wait (grpc's default)
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
)
Context = grpc.aio.ServicerContext[Any, Any]
_log = logging.getLogger("implementation.connector_core.server")


class ListenError(OSError):
    """The server cannot listen on the address; the message says which and why."""


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC status an exchange failure becomes."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, InvalidData):
        return grpc.StatusCode.UNAVAILABLE, f"upstream exchange sent invalid data: {exc}"
    if isinstance(exc, ExchangeUnavailable):
        return grpc.StatusCode.UNAVAILABLE, f"upstream exchange unavailable: {exc}"
    if isinstance(exc, ExchangeError):
        return grpc.StatusCode.UNAVAILABLE, f"upstream exchange error: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class _Gate:
    """Counts calls in flight; refuses new ones once draining, or while `limit` are in flight."""

    def __init__(self, limit: int = DEFAULT_MAX_CALLS) -> None:
        self.active = 0
        self.draining = False
        self.limit = limit
        self.refused: Counter[str] = Counter()  # by reason: shutting_down, overloaded
        self._idle: asyncio.Event | None = None

    def enter(self) -> tuple[grpc.StatusCode, str] | None:
        """None when admitted (leave() later); else the status to refuse the call with."""
        if self.draining:
            self.refused["shutting_down"] += 1
            return grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN
        if self.active >= self.limit:
            self.refused["overloaded"] += 1
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.limit} calls in flight already; retry with backoff",
            )
        self.active += 1
        return None

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no call is in flight, False when `timeout` passed first."""
        if self.active == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return False
        return True


class ExchangeService(pb_grpc.ExchangeServiceServicer):
    """The four RPCs of the contract."""

    def __init__(
        self,
        exchange: Exchange,
        hub: Hub,
        gate: _Gate,
        positions: SharedCalls[str, list[pb.Position]] | None = None,
    ) -> None:
        self._exchange = exchange
        self._hub = hub
        self._gate = gate
        # concurrent GetPositions for one symbol share one upstream call
        self._positions: SharedCalls[str, list[pb.Position]] = positions or SharedCalls()

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        await self._enter(context)
        try:
            hub = self._hub
            stale = hub.stale_reason()
            if stale is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the connector's view is stale: {stale}")
            current = hub.current_account()
            if current is not None:
                # kept current by the one upstream subscription: no second round trip
                await context.send_initial_metadata(((DATA_AGE_KEY, str(int(hub.data_age() * 1000))),))
                return current
            try:
                account = validate_account(await self._exchange.get_account())
                hub.offer_account(account)
                await context.send_initial_metadata(((DATA_AGE_KEY, "0"),))
                return account
            except Exception as exc:
                failure = exc
            await self._fail(context, "GetAccount", failure)
        finally:
            self._gate.leave()

    async def GetPositions(
        self, request: pb.GetPositionsRequest, context: Context
    ) -> pb.GetPositionsResponse:
        await self._enter(context)
        try:
            try:
                symbol = check_symbol(request.symbol)
                exchange = self._exchange
                positions = await self._positions.call(symbol, lambda: exchange.get_positions(symbol))
                answer = pb.GetPositionsResponse(
                    positions=[validate_position(p) for p in positions if not symbol or p.symbol == symbol]
                )
                await context.send_initial_metadata(((DATA_AGE_KEY, "0"),))
                return answer
            except Exception as exc:
                failure = exc
            await self._fail(context, "GetPositions", failure)
        finally:
            self._gate.leave()

    # Streams write with `await context.write()` (no async generator: one hand-off less per
    # message); the generated stubs only know the iterator form, hence the ignores.
    async def SubscribeAccount(  # type: ignore[override]
        self, request: pb.SubscribeAccountRequest, context: Context
    ) -> None:
        await self._stream(ACCOUNT, "", context)

    async def SubscribePositions(  # type: ignore[override]
        self, request: pb.SubscribePositionsRequest, context: Context
    ) -> None:
        try:
            symbol = check_symbol(request.symbol)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._stream(POSITIONS, symbol, context)

    async def _stream(self, topic: str, symbol: str, context: Context) -> None:
        await self._enter(context)
        try:
            stats = self._hub.stats[topic]
            try:
                async with self._hub.subscribe(topic, symbol=symbol, peer=context.peer()) as subscription:
                    # headers now: the client can tell the subscription is in place before any update
                    await context.send_initial_metadata(())
                    write = context.write
                    next_message = subscription.next
                    while True:
                        await write(await next_message())
                        stats.sent += 1
            except SubscriptionEnded as ended:
                await context.abort(ended.code, ended.details)
        finally:
            self._gate.leave()

    async def _enter(self, context: Context) -> None:
        refusal = self._gate.enter()
        if refusal is not None:
            await context.abort(*refusal)

    @staticmethod
    async def _fail(context: Context, method: str, exc: Exception) -> NoReturn:
        code, details = status_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            _log.error("%s failed", method, exc_info=exc, extra={"event": "call_failed", "method": method})
        elif isinstance(exc, InvalidData):  # the exchange's fault, worth an operator's attention
            log_event(_log, "upstream_invalid_data", level=logging.ERROR, method=method, reason=str(exc))
        else:
            log_event(_log, "call_failed", level=logging.DEBUG, method=method, code=code.name, reason=details)
        await context.abort(code, details)


def _connect_address(host: str, port: int) -> str:
    """Where a local client reaches a server listening on `host` (wildcards become loopback)."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    if bare == "::":
        return f"[::1]:{port}"
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "HOST:PORT" or "[V6]:PORT"; ValueError naming the address otherwise."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"address {address!r} is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"address {address!r}: an IPv6 host goes in brackets, e.g. [::1]:50051")
    return host, int(port_text)


class ExchangeServer:
    """The ExchangeService for one exchange: start(), then stop() (graceful; twice is harmless)."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        token: str | None = None,
        tls: TlsServerConfig | None = None,
        grace_period: float = 5.0,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        reflection: bool = True,
        backoff: ReconnectPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
        freshness: FreshnessPolicy | None = None,
        max_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        if grace_period < 0:
            raise ValueError(f"grace_period must be >= 0 s, got {grace_period}")
        self.exchange = exchange
        self.token = token
        self.tls = tls
        self.grace_period = grace_period
        self.reflection = reflection
        self.hub = Hub(
            exchange, queue_size=queue_size, backoff=backoff, on_serving=self._on_serving, freshness=freshness
        )
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.address = ""
        self.stats = CallStats()
        self.positions_calls: SharedCalls[str, list[pb.Position]] = SharedCalls()
        self.service: ExchangeService | None = None
        self._interceptor = BearerTokenInterceptor(token, self.stats) if token is not None else None
        self._options = (*SERVER_OPTIONS, *options)
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self._gate = _Gate(max_calls)
        self.refused = self._gate.refused
        self._server: grpc.aio.Server | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._ready_logged = False

    @property
    def serving(self) -> bool:
        return self.hub.healthy and not self._gate.draining

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on `address` (port 0: any free port) and connect upstream in the background; the port."""
        if self._server is not None or self._stopped is not None:
            raise RuntimeError("an ExchangeServer starts once")
        host, _ = split_address(address)
        credentials = self.tls.credentials() if self.tls is not None else None
        server = grpc.aio.server(
            interceptors=[self._interceptor] if self._interceptor else None, options=self._options
        )
        self.service = ExchangeService(self.exchange, self.hub, self._gate, self.positions_calls)
        add_service(self.service, server, self.stats)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            await server.stop(None)
            raise ListenError(f"cannot listen on {address}: {_bind_reason(exc)}") from None
        if port == 0:
            await server.stop(None)
            raise ListenError(f"cannot listen on {address}")
        await server.start()
        self._server, self.port, self.address = server, port, _connect_address(host, port)
        log_event(
            _log, "listening", address=address, port=port, tls=self.tls is not None,
            mutual_tls=bool(self.tls and self.tls.mutual), token=self.token is not None,
        )  # fmt: skip
        await self.hub.start()
        return port

    async def wait_serving(self, timeout: float = 5.0) -> None:
        """Return once the upstream is up and streams are served; TimeoutError saying why otherwise."""
        await self.hub.wait_serving(timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown within `grace` seconds (default: grace_period); a second call waits for the first."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            await self._shutdown(self.grace_period if grace is None else grace)
        finally:
            self._stopped.set_result(None)

    async def _shutdown(self, grace: float) -> None:
        server = self._server
        if server is None:
            await self.hub.stop()
            return
        log_event(_log, "shutdown_started", active_calls=self._gate.active, grace_s=grace)
        await self.health.enter_graceful_shutdown()
        self._gate.draining = True
        self.hub.close_subscribers(SHUTTING_DOWN)
        drained = await self._gate.wait_idle(grace)
        cancelled = self._gate.active  # counted before the stop: cancelled calls leave the gate as they end
        await server.stop(0)  # what is still running after the grace period is cancelled
        await self.hub.stop()
        log_event(_log, "shutdown_complete", drained=drained, cancelled_calls=cancelled)

    async def _on_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in HEALTH_SERVICES:
            await self.health.set(service, status)
        if serving and not self._ready_logged:
            self._ready_logged = True
            log_event(_log, "ready", port=self.port, address=self.address)
        else:
            log_event(_log, "serving" if serving else "not_serving", port=self.port)


def _bind_reason(exc: RuntimeError) -> str:
    text = str(exc)
    if "Failed to bind" in text or "address" in text.lower():
        return "the address is in use or not available on this host"
    return text


__all__ = ["HEALTH_SERVICES", "SERVICE_NAME", "ExchangeServer", "ExchangeService", "ListenError", "status_of"]
