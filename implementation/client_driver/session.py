"""One client-driver session on RemoteExchange: each command of docs/client-driver.md, its events.

Every command runs as a task of its own, so a `cancel` reaches a call that is still waiting. A
stream's events are told apart by a context variable: the stream's task (created by the library
inside start_*_stream) inherits it, so the library's log records of that stream name its command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from implementation.client_driver.events import Emitter, now_ms, payload
from implementation.client_library.remote_exchange import (
    ConnectTimeout,
    ReconnectPolicy,
    RemoteError,
    RemoteExchange,
    StreamHandle,
)
from implementation.contract.errors import ExchangeError, InvalidData

Command = dict[str, Any]
STREAM_ID: ContextVar[str | None] = ContextVar("client_driver_stream", default=None)
STREAM_ERRORS = frozenset({"stream_broken", "stream_attempt_failed"})
LIBRARY_LOGGER = "implementation.client_driver.library"


class BadCommand(ValueError):
    """The command cannot be carried out as written (unknown, malformed, or out of order)."""


class StreamEvents(logging.Handler):
    """The library's "stream broke" log records, as stream_error events of the stream that logged them."""

    def __init__(self, emitter: Emitter) -> None:
        super().__init__(logging.DEBUG)
        self._emitter = emitter

    def emit(self, record: logging.LogRecord) -> None:
        stream_id = STREAM_ID.get()
        if stream_id is None or getattr(record, "event", None) not in STREAM_ERRORS:
            return
        backoff = getattr(record, "backoff_s", None)
        self._emitter.emit(
            "stream_error",
            stream_id,
            code=str(getattr(record, "code", "")),
            details=str(getattr(record, "details", "")),
            message=record.getMessage(),
            level=record.levelname.lower(),
            backoff_ms=None if backoff is None else round(float(backoff) * 1000.0, 3),
        )


def _seconds(command: Command, key: str, default: float | None) -> float | None:
    value = command.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadCommand(f"{key} must be a positive number of milliseconds, got {value!r}")
    return float(value) / 1000.0


class Driver:
    """The session's state: at most one client, its calls in flight and its streams."""

    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter
        self._client: RemoteExchange | None = None
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[str, StreamHandle[Any]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._finished: set[str] = set()
        self._logger = logging.getLogger(LIBRARY_LOGGER)
        self._logger.addHandler(StreamEvents(emitter))

    async def handle(self, command: Command) -> None:
        """Carry out one command; a command that cannot be carried out gets an error event."""
        command_id = command.get("id")
        started = now_ms()
        if not isinstance(command_id, str) or not command_id:
            self._error(
                None, "bad_command", f"every command needs a non-empty string id, got {command!r}", started
            )
            return
        handlers: dict[str, Callable[[str, Command, float], Awaitable[None]]] = {
            "connect": self._connect,
            "get_account": self._get_account,
            "get_positions": self._get_positions,
            "subscribe_account": self._subscribe_account,
            "subscribe_positions": self._subscribe_positions,
            "cancel": self._cancel,
            "close": self._close,
        }
        handler = handlers.get(str(command.get("cmd")))
        try:
            if handler is None:
                raise BadCommand(f"unknown command {command.get('cmd')!r} (known: {', '.join(handlers)})")
            await handler(command_id, command, started)
        except BadCommand as exc:
            self._error(command_id, "bad_command", str(exc), started)

    async def shutdown(self) -> None:
        """End of input: stop everything and close the client."""
        await self._close(None, {}, now_ms())

    # ------------------------------------------------------------------------------ commands

    async def _connect(self, command_id: str, command: Command, started: float) -> None:
        if self._client is not None:
            raise BadCommand("a client is already connected: send close first")
        address = command.get("address")
        if not isinstance(address, str):
            raise BadCommand(f"address must be a string, got {address!r}")
        tls = command.get("tls") or {}
        reconnect = command.get("reconnect") or {}
        initial = _seconds(reconnect, "initial_backoff_ms", 0.1) or 0.1
        policy = ReconnectPolicy(
            initial_backoff=initial,
            max_backoff=max(initial, _seconds(reconnect, "max_backoff_ms", 5.0) or 5.0),
        )
        try:
            client = RemoteExchange(
                address,
                connect_timeout=_seconds(command, "connect_timeout_ms", 5.0) or 5.0,
                call_timeout=_seconds(command, "call_timeout_ms", 10.0),
                tls_ca=tls.get("ca"),
                tls_cert=tls.get("cert"),
                tls_key=tls.get("key"),
                token=command.get("token"),
                reconnect=policy,
                logger=self._logger,
            )
        except ValueError as exc:
            message = str(exc)
            kind = "bad_command"
            if message.startswith("exchange address is empty"):
                kind = "empty_address"
            elif message.startswith("exchange address"):
                kind = "invalid_address"
            self._error(command_id, kind, message, started)
            return
        self._client = client
        self._track(command_id, self._connecting(command_id, client, started))

    async def _connecting(self, command_id: str, client: RemoteExchange, started: float) -> None:
        try:
            await client.connect()
        except ConnectTimeout as exc:
            await self._drop(client)
            self._error(command_id, "connect_timeout", str(exc), started)
        except asyncio.CancelledError:
            await self._drop(client)
            self._error(command_id, "cancelled", "connect cancelled", started)
        else:
            self._emitter.emit("connected", command_id, took_ms=round(now_ms() - started, 3), tls=client.tls)

    async def _get_account(self, command_id: str, command: Command, started: float) -> None:
        client = self._connected()
        timeout = _seconds(command, "deadline_ms", None)
        self._unary(
            command_id,
            started,
            lambda: client.get_account(timeout=timeout),
            lambda a: {"account": payload(a)},
        )

    async def _get_positions(self, command_id: str, command: Command, started: float) -> None:
        client = self._connected()
        timeout = _seconds(command, "deadline_ms", None)
        symbol = str(command.get("symbol") or "")
        self._unary(
            command_id,
            started,
            lambda: client.get_positions(symbol, timeout=timeout),
            lambda positions: {"positions": [payload(p) for p in positions]},
        )

    async def _subscribe_account(self, command_id: str, command: Command, started: float) -> None:
        client = self._connected()
        self._subscribe(
            command_id, "account", lambda cb, hook: client.start_account_stream(cb, on_reconnect=hook)
        )

    async def _subscribe_positions(self, command_id: str, command: Command, started: float) -> None:
        client = self._connected()
        symbol = str(command.get("symbol") or "")
        self._subscribe(
            command_id,
            "position",
            lambda cb, hook: client.start_position_stream(symbol, cb, on_reconnect=hook),
        )

    async def _cancel(self, command_id: str, command: Command, started: float) -> None:
        target = command.get("target")
        if not isinstance(target, str):
            raise BadCommand(f"cancel needs the target command's id, got {target!r}")
        if target in self._streams:
            await self._stop_stream(target)
        elif target in self._calls:
            call = self._calls[target]
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        elif target not in self._finished:
            raise BadCommand(f"no call or stream has the id {target!r}")
        self._emitter.emit("cancelled", command_id, target=target, took_ms=round(now_ms() - started, 3))

    async def _close(self, command_id: str | None, command: Command, started: float) -> None:
        for stream_id in list(self._streams):
            await self._stop_stream(stream_id)
        for call in list(self._calls.values()):
            call.cancel()
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if command_id is not None:
            self._emitter.emit("closed", command_id, took_ms=round(now_ms() - started, 3))

    # ------------------------------------------------------------------------------ helpers

    def _connected(self) -> RemoteExchange:
        if self._client is None:
            raise BadCommand("no client: send connect first")
        return self._client

    def _unary(
        self,
        command_id: str,
        started: float,
        call: Callable[[], Awaitable[Any]],
        render: Callable[[Any], dict[str, Any]],
    ) -> None:
        async def run() -> None:
            try:
                answer = await call()
            except RemoteError as exc:
                self._error(command_id, "rpc", str(exc), started, code=exc.code.name, details=exc.details)
            except InvalidData as exc:
                self._error(command_id, "invalid_data", str(exc), started)
            except ExchangeError as exc:
                self._error(command_id, "rpc", str(exc), started, code="UNAVAILABLE", details=str(exc))
            except asyncio.CancelledError:
                self._error(command_id, "cancelled", "the call was cancelled", started, code="CANCELLED")
            else:
                self._emitter.emit(
                    "result", command_id, took_ms=round(now_ms() - started, 3), **render(answer)
                )

        self._track(command_id, run())

    def _subscribe(
        self,
        command_id: str,
        field: str,
        start: Callable[[Callable[[Any], None], Callable[[], None]], StreamHandle[Any]],
    ) -> None:
        def deliver(message: Any) -> None:
            self._emitter.emit("update", command_id, **{field: payload(message)})

        def reconnected() -> None:
            self._emitter.emit("reconnected", command_id)

        token = STREAM_ID.set(command_id)
        try:  # the stream's task, created in start(), inherits STREAM_ID
            handle = start(deliver, reconnected)
            self._streams[command_id] = handle

            async def watch() -> None:
                await handle.wait_connected()
                self._emitter.emit("subscribed", command_id)

            self._watchers[command_id] = asyncio.get_running_loop().create_task(watch())
        finally:
            STREAM_ID.reset(token)

    async def _stop_stream(self, stream_id: str) -> None:
        handle = self._streams.pop(stream_id)
        watcher = self._watchers.pop(stream_id, None)
        if watcher is not None:
            watcher.cancel()
        await handle.cancel()
        self._finished.add(stream_id)

    def _track(self, command_id: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                self._calls.pop(command_id, None)
                self._finished.add(command_id)

        self._calls[command_id] = asyncio.get_running_loop().create_task(run())

    async def _drop(self, client: RemoteExchange) -> None:
        if self._client is client:
            self._client = None
        await client.close()

    def _error(self, command_id: str | None, kind: str, message: str, started: float, **fields: Any) -> None:
        self._emitter.emit(
            "error",
            command_id,
            kind=kind,
            code=fields.pop("code", ""),
            details=fields.pop("details", ""),
            message=message,
            took_ms=round(now_ms() - started, 3),
            **fields,
        )


__all__ = ["BadCommand", "Driver"]
