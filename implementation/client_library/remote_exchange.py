"""RemoteExchange: the client of an ExchangeService (an exchange_connector) over gRPC.

It is the `remote` exchange of market_maker and live_server, and the base of the connector's
`grpc` adapter. One grpc.aio channel per client; unary calls map gRPC failures to RemoteError
(keeping code and details); streams are either one plain subscription (subscribe_*, run_*, and
relay_* for the connector's upstream: each message as received, straight to a callback) or a
StreamHandle that reconnects by itself (start_*_stream).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc

from implementation.client_library.address import check_address
from implementation.client_library.resilient_stream import StreamBreak, StreamHandle
from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import ExchangeError, ExchangeUnavailable, InvalidData, InvalidRequest
from implementation.contract.validation import check_symbol, validate_account, validate_position
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

LOGGER_NAME = "implementation.client_library.remote_exchange"
# How long connect() spends, after its timeout, asking gRPC why the channel is not ready.
DIAGNOSE_S = 0.25
T = TypeVar("T")
DEFAULT_RECONNECT = ReconnectPolicy()

# ---------------------------------------------------------------------------------------------- errors


class RemoteError(ExchangeError):
    """A call to the ExchangeService failed; keeps the gRPC status code and the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method} failed: {code.name}: {details}")


class RemoteDeadlineExceeded(RemoteError):
    """The call's timeout passed before the answer arrived (DEADLINE_EXCEEDED)."""


class RemoteUnavailable(RemoteError, ExchangeUnavailable):
    """The connector (or its upstream exchange) cannot be reached (UNAVAILABLE)."""


class RemoteInvalidRequest(RemoteError, InvalidRequest):
    """The connector rejected the request as malformed (INVALID_ARGUMENT)."""


class ConnectTimeout(ExchangeUnavailable):
    """connect() gave up: the channel was not ready within the connect timeout."""

    def __init__(self, message: str, *, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        super().__init__(message)


_ERROR_CLASSES: dict[grpc.StatusCode, type[RemoteError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: RemoteDeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: RemoteUnavailable,
    grpc.StatusCode.INVALID_ARGUMENT: RemoteInvalidRequest,
}


def remote_error(method: str, code: grpc.StatusCode, details: str) -> RemoteError:
    """The RemoteError subclass for a status code."""
    return _ERROR_CLASSES.get(code, RemoteError)(method, code, details)


def _from_rpc_error(method: str, exc: grpc.aio.AioRpcError) -> RemoteError:
    return remote_error(method, exc.code(), exc.details() or "")


# ---------------------------------------------------------------------------------------------- client


def _read_pem(option: str, path: str | Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{option} file {str(path)!r} cannot be read: {exc.strerror or exc}") from None


class RemoteExchange:
    """A client of one ExchangeService address; an async context manager (connect ... close)."""

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
        reconnect: ReconnectPolicy = DEFAULT_RECONNECT,
        logger: logging.Logger | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = check_address(address)
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 s, got {connect_timeout}")
        if call_timeout is not None and call_timeout <= 0:
            raise ValueError(f"call_timeout must be > 0 s or None, got {call_timeout}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError(
                "tls_cert and tls_key go together: give both for a client certificate, or neither"
            )
        if token is not None and (not token.strip() or any(c in token for c in "\r\n")):
            raise ValueError("token must be a non-empty single line")
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.tls_ca = tls_ca
        self.reconnect_policy = reconnect
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._credentials: grpc.ChannelCredentials | None = None
        if tls_ca is not None or tls_cert is not None:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem("tls_ca", tls_ca),
                private_key=_read_pem("tls_key", tls_key),
                certificate_chain=_read_pem("tls_cert", tls_cert),
            )
        self._metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {token}"),) if token is not None else None
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ExchangeServiceAsyncStub | None = None
        self._handles: set[StreamHandle[Any]] = set()
        self._closed = False
        self._channel_options = list(channel_options)  # e.g. keepalive; added to the reconnect options

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    # ------------------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Wait until the channel is connected, at most connect_timeout seconds (then ConnectTimeout)."""
        channel = self._open_channel()
        try:
            await asyncio.wait_for(channel.channel_ready(), self.connect_timeout)
        except asyncio.TimeoutError:
            raise self._connect_timeout_error(await self._last_error(channel)) from None
        self._log(logging.INFO, "connected", tls=self.tls)

    async def close(self) -> None:
        """Stop every stream started here and close the channel; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        for handle in list(self._handles):
            await handle.cancel()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
            self._log(logging.INFO, "closed")

    async def __aenter__(self) -> RemoteExchange:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------ unary calls

    async def get_account(self, *, timeout: float | None = None) -> pb.Account:
        """The account; RemoteError on failure, RemoteDeadlineExceeded after `timeout` (default call_timeout)."""
        stub = self._service()
        try:
            account = await stub.GetAccount(
                pb.GetAccountRequest(), timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _from_rpc_error("GetAccount", exc) from exc
        return self._checked("GetAccount", validate_account, account)

    async def get_positions(self, symbol: str = "", *, timeout: float | None = None) -> list[pb.Position]:
        """The open positions of `symbol` (empty: all); InvalidRequest at once for a malformed symbol."""
        stub = self._service(symbol)
        try:
            response = await stub.GetPositions(
                pb.GetPositionsRequest(symbol=symbol),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise _from_rpc_error("GetPositions", exc) from exc
        return [self._checked("GetPositions", validate_position, position) for position in response.positions]

    # ------------------------------------------------------------------------------ streams

    def subscribe_account(self) -> AsyncIterator[pb.Account]:
        """One SubscribeAccount stream, as received (not validated, no reconnect); RemoteError if it fails.
        The call starts at the first iteration and is cancelled when the iterator is closed."""
        return self._account_subscription()

    def subscribe_positions(self, symbol: str = "") -> AsyncIterator[pb.Position]:
        """One SubscribePositions stream (server-side symbol filter; empty = all), as received."""
        return self._position_subscription(symbol)

    async def run_account_stream(self, callback: Callable[[pb.Account], object]) -> None:
        """Exchange interface: deliver valid account updates until cancelled; ExchangeError when the stream ends."""
        await self._run_stream("SubscribeAccount", self._open_account_call(), validate_account, callback)

    async def run_position_stream(self, callback: Callable[[pb.Position], object]) -> None:
        """Exchange interface: deliver valid position updates (all symbols) until cancelled or failed."""
        await self._run_stream(
            "SubscribePositions", self._open_position_call(""), validate_position, callback
        )

    async def relay_account(self, callback: Callable[[pb.Account], object]) -> None:
        """One SubscribeAccount stream, each message as received (not validated, no reconnect) to the
        plain function `callback`; returns when the server ends the stream, RemoteError if it fails."""
        await _relay("SubscribeAccount", self._open_account_call(), callback)

    async def relay_positions(self, callback: Callable[[pb.Position], object], symbol: str = "") -> None:
        """One SubscribePositions stream (empty symbol: all), as relay_account()."""
        await _relay("SubscribePositions", self._open_position_call(symbol), callback)

    def start_account_stream(
        self,
        callback: Callable[[pb.Account], object] | None = None,
        *,
        on_reconnect: Callable[[], object] | None = None,
    ) -> StreamHandle[pb.Account]:
        """Account updates in the background, reconnecting by itself; to `callback`, or `async for` the handle."""
        stub = self._service()

        def open_call() -> grpc.aio.UnaryStreamCall[pb.SubscribeAccountRequest, pb.Account]:
            return stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=self._metadata)

        return self._start("account", "SubscribeAccount", open_call, validate_account, callback, on_reconnect)

    def start_position_stream(
        self,
        symbol: str = "",
        callback: Callable[[pb.Position], object] | None = None,
        *,
        on_reconnect: Callable[[], object] | None = None,
    ) -> StreamHandle[pb.Position]:
        """Position updates of `symbol` (empty: all) in the background, reconnecting by itself."""
        stub = self._service(symbol)
        request = pb.SubscribePositionsRequest(symbol=symbol)

        def open_call() -> grpc.aio.UnaryStreamCall[pb.SubscribePositionsRequest, pb.Position]:
            return stub.SubscribePositions(request, metadata=self._metadata)

        name = f"positions[{symbol}]" if symbol else "positions"
        return self._start(name, "SubscribePositions", open_call, validate_position, callback, on_reconnect)

    # ------------------------------------------------------------------------------ internals

    def _account_subscription(self) -> AsyncGenerator[pb.Account, None]:
        stub = self._service()
        request = pb.SubscribeAccountRequest()
        return _subscription(
            "SubscribeAccount", lambda: stub.SubscribeAccount(request, metadata=self._metadata)
        )

    def _position_subscription(self, symbol: str) -> AsyncGenerator[pb.Position, None]:
        stub = self._service(symbol)
        request = pb.SubscribePositionsRequest(symbol=symbol)
        return _subscription(
            "SubscribePositions", lambda: stub.SubscribePositions(request, metadata=self._metadata)
        )

    def _open_account_call(self) -> grpc.aio.UnaryStreamCall[pb.SubscribeAccountRequest, pb.Account]:
        return self._service().SubscribeAccount(pb.SubscribeAccountRequest(), metadata=self._metadata)

    def _open_position_call(
        self, symbol: str
    ) -> grpc.aio.UnaryStreamCall[pb.SubscribePositionsRequest, pb.Position]:
        request = pb.SubscribePositionsRequest(symbol=symbol)
        return self._service(symbol).SubscribePositions(request, metadata=self._metadata)

    def _open_channel(self) -> grpc.aio.Channel:
        if self._closed:
            raise ExchangeUnavailable(f"the client of the exchange at {self.address} is closed")
        if self._channel is None:
            # The channel's own reconnect backoff follows the stream policy, so a restarted server
            # is noticed about as soon as the next stream attempt would look for it.
            options = [
                (
                    "grpc.initial_reconnect_backoff_ms",
                    max(1, int(self.reconnect_policy.initial_backoff * 1000)),
                ),
                ("grpc.max_reconnect_backoff_ms", max(1, int(self.reconnect_policy.max_backoff * 1000))),
                *self._channel_options,
            ]
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.address, self._credentials, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options=options)
            self._stub = pb_grpc.ExchangeServiceStub(self._channel)
        return self._channel

    def _service(self, symbol: str = "") -> pb_grpc.ExchangeServiceAsyncStub:
        check_symbol(symbol)
        self._open_channel()
        assert self._stub is not None, "set with the channel"
        return self._stub

    def _deadline(self, timeout: float | None) -> float | None:
        return self.call_timeout if timeout is None else timeout

    def _checked(self, method: str, validate: Callable[[T], T], message: T) -> T:
        try:
            return validate(message)
        except InvalidData as exc:
            self._log(logging.WARNING, "invalid_response", method=method, reason=str(exc))
            raise InvalidData(f"{method} from {self.address}: {exc}") from None

    def _start(
        self,
        name: str,
        method: str,
        open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, T]],
        validate: Callable[[T], T],
        callback: Callable[[T], object] | None,
        on_reconnect: Callable[[], object] | None,
    ) -> StreamHandle[T]:
        handle: StreamHandle[T] = StreamHandle(
            name,
            open_call,
            validate=validate,
            callback=callback,
            on_reconnect=on_reconnect,
            policy=self.reconnect_policy,
            logger=self._logger,
            address=self.address,
            to_error=lambda outcome: _stream_error(method, outcome),
            channel=self._channel,
            on_finished=self._handles.discard,
        )
        self._handles.add(handle)
        return handle

    async def _run_stream(
        self,
        method: str,
        call: grpc.aio.UnaryStreamCall[Any, T],
        validate: Callable[[T], T],
        callback: Callable[[T], object],
    ) -> None:
        # One read loop on the call itself: no async generator between the socket and the callback.
        try:
            while True:
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError as exc:
                    raise _from_rpc_error(method, exc) from exc
                if message is grpc.aio.EOF:
                    break
                try:
                    item = validate(cast(T, message))
                except InvalidData as exc:
                    self._log(logging.WARNING, "invalid_message_skipped", method=method, reason=str(exc))
                    continue
                result = callback(item)
                if inspect.isawaitable(result):
                    await result
        finally:
            call.cancel()
        raise RemoteUnavailable(
            method, grpc.StatusCode.UNAVAILABLE, f"the server at {self.address} ended the stream"
        )

    def _connect_timeout_error(self, last_error: str | None) -> ConnectTimeout:
        seconds = f"{self.connect_timeout:g} s"
        cause = f"; last error: {last_error}" if last_error else ""
        trusted = (
            f"the CA file {str(self.tls_ca)!r}" if self.tls_ca is not None else "the system's trusted CAs"
        )
        if self._credentials is None:
            message = f"could not connect to the exchange at {self.address} within {seconds} (connect timeout){cause}"
        elif last_error and "CERTIFICATE_VERIFY_FAILED" in last_error:
            message = (
                f"TLS handshake with {self.address} failed: certificate verification failed, the server's "
                f"certificate is not trusted by {trusted} (gave up after {seconds}){cause}"
            )
        else:
            message = (
                f"TLS handshake with {self.address} failed or timed out after {seconds} (check that "
                f"{trusted} signed the server's certificate, the certificate names the host, "
                f"and the server speaks TLS){cause}"
            )
        return ConnectTimeout(message, address=self.address, timeout=self.connect_timeout)

    @staticmethod
    async def _last_error(channel: grpc.aio.Channel) -> str | None:
        """Why the channel is not ready, as gRPC tells a fail-fast call (a health check: no side effects)."""
        probe: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/grpc.health.v1.Health/Check"
        )
        try:
            await probe(b"", timeout=DIAGNOSE_S, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return exc.details()
        return None

    def _log(self, level: int, event: str, **fields: object) -> None:
        extra = {"event": event, "address": self.address, **fields}
        shown = " ".join(f"{key}={value}" for key, value in fields.items())
        self._logger.log(level, "%s %s %s", event, self.address, shown, extra=extra)


async def _relay(
    method: str, call: grpc.aio.UnaryStreamCall[Any, T], callback: Callable[[T], object]
) -> None:
    """Every message of one stream call to `callback`, in one read loop (the connector's hot path);
    returns at the end of the stream, RemoteError when it fails; the call is cancelled on the way out."""
    read = call.read
    try:
        while True:
            try:
                message = await read()
            except grpc.aio.AioRpcError as exc:
                raise _from_rpc_error(method, exc) from exc
            if message is grpc.aio.EOF:
                return
            callback(cast(T, message))
    finally:
        call.cancel()


async def _subscription(
    method: str, open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, T]]
) -> AsyncGenerator[T, None]:
    """Every message of one stream call, opened at the first iteration and cancelled when the reader stops."""
    call = open_call()
    try:
        while True:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as exc:
                raise _from_rpc_error(method, exc) from exc
            if message is grpc.aio.EOF:
                return
            yield cast(T, message)
    finally:
        call.cancel()


def _stream_error(method: str, outcome: StreamBreak) -> RemoteError:
    if outcome.code == grpc.StatusCode.OK:  # the server closed the stream without an error
        return RemoteUnavailable(method, grpc.StatusCode.UNAVAILABLE, outcome.details)
    return remote_error(method, outcome.code, outcome.details)


__all__ = [
    "ConnectTimeout",
    "ReconnectPolicy",
    "RemoteDeadlineExceeded",
    "RemoteError",
    "RemoteExchange",
    "RemoteInvalidRequest",
    "RemoteUnavailable",
    "StreamHandle",
    "check_address",
    "remote_error",
]
