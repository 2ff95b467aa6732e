"""A long-lived subscription to one ExchangeService stream that survives connection loss.

A StreamHandle owns one background task. The task subscribes, validates every message (an
invalid one is logged and skipped, never delivered), hands each valid message to its sink — a
callback, or a bounded buffer read with `async for` — and, when the stream breaks for any
reason, subscribes again after an exponential, jittered backoff. Both kinds of user are served
by this one task; only the last step (deliver) differs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import grpc

from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import InvalidData

T = TypeVar("T")

# Codes that say "try again later"; any other code is logged as an error (then retried all the same).
TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OK}
)
# A subscription that stayed up this long (or delivered a message) resets the backoff.
STREAM_STABLE_AFTER_S = 1.0
# cancel() waits this long for the task; a callback that swallows cancellation cannot hold it longer.
CANCEL_WAIT_S = 0.9
# Messages held for an `async for` reader before the task stops reading (gRPC flow control then
# pushes back to the server, which drops a subscriber that stays this far behind).
BUFFER_LIMIT = 1024


@dataclass(frozen=True)
class StreamBreak:
    """Why one subscription ended: its status (OK when the server simply closed the stream)."""

    code: grpc.StatusCode
    details: str


OpenCall = Callable[[], "grpc.aio.UnaryStreamCall[Any, T]"]
ErrorFactory = Callable[[StreamBreak], Exception]


class _Buffer(Generic[T]):
    """A bounded FIFO between the stream task and an `async for` reader."""

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._ended = False

    async def put(self, item: T) -> None:
        while len(self._items) >= self._limit and not self._ended:
            self._writable.clear()
            await self._writable.wait()
        if not self._ended:
            self._items.append(item)
            self._readable.set()

    async def get(self) -> T | None:
        """The next item; None once ended and drained."""
        while not self._items and not self._ended:
            self._readable.clear()
            await self._readable.wait()
        if not self._items:
            return None
        self._writable.set()
        return self._items.popleft()

    def end(self, *, drop: bool) -> None:
        """No more items: the reader gets what is left (unless dropped), then None."""
        self._ended = True
        if drop:
            self._items.clear()
        self._readable.set()
        self._writable.set()


class StreamHandle(Generic[T]):
    """A background subscription. Iterate it with `async for` (when no callback was given),
    stop it with `await handle.cancel()` or by leaving `async with handle:` (so cancelling the
    task that owns the `async with` stops it too).

    `connected` turns true when the server sends the stream's headers (or its first message).
    After a subscription that followed a failure, on_reconnect runs in that same event-loop step,
    before any message of the new subscription is delivered: an owner that resynchronises there
    (get_account()) cannot miss the gap, and live updates resume after its resync.
    """

    def __init__(
        self,
        name: str,
        open_call: OpenCall[T],
        *,
        validate: Callable[[T], T],
        callback: Callable[[T], object] | None,
        on_reconnect: Callable[[], object] | None,
        policy: ReconnectPolicy,
        logger: logging.Logger,
        address: str,
        to_error: ErrorFactory,
        channel: grpc.aio.Channel | None = None,
        on_finished: Callable[[StreamHandle[T]], None] | None = None,
    ) -> None:
        self.name = name
        self._open_call = open_call
        self._validate = validate
        self._callback = callback
        self._on_reconnect = on_reconnect
        self._policy = policy
        self._logger = logger
        self._address = address
        self._to_error = to_error
        self._channel = channel
        self._on_finished = on_finished
        self._buffer: _Buffer[T] | None = _Buffer(BUFFER_LIMIT) if callback is None else None
        self._connected = asyncio.Event()
        self._stopping = False
        self._error: Exception | None = None
        self._delivered_since_connect = 0
        self._connected_at: float | None = None
        self.reconnects = 0  # successful subscriptions that followed a failure
        self.errors = 0  # subscriptions that broke, and attempts that failed
        self.invalid = 0  # messages skipped because they failed validation
        self.delivered = 0  # messages handed to the callback or the buffer
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{name} stream {address}")
        self._task.add_done_callback(self._finished)

    # ------------------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def error(self) -> Exception | None:
        """The error the stream gave up with (only when ReconnectPolicy.max_attempts is set)."""
        return self._error

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once the stream is subscribed (the server sent headers or a message); False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def cancel(self) -> None:
        """Stop the stream. Once this returns, no callback runs and iteration ends."""
        self._stopping = True
        if self._buffer is not None:
            self._buffer.end(drop=True)
        if self._task is asyncio.current_task():
            return  # called from our own callback: the task ends after it returns
        if not self._task.done():
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=CANCEL_WAIT_S)
            if not done:
                self._log(logging.WARNING, "stream_cancel_slow", wait_s=CANCEL_WAIT_S)

    async def __aenter__(self) -> StreamHandle[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cancel()

    def __aiter__(self) -> StreamHandle[T]:
        if self._buffer is None:
            raise TypeError(f"the {self.name} stream delivers to its callback; it cannot also be iterated")
        return self

    async def __anext__(self) -> T:
        assert self._buffer is not None, "checked by __aiter__"
        item = await self._buffer.get()
        if item is None:
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item

    # ------------------------------------------------------------------------------ the task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive failed attempts since the last stable subscription
        broken_at: float | None = None
        while not self._stopping:
            started = loop.time()
            self._delivered_since_connect = 0
            outcome = await self._subscribe_once(failures, broken_at)
            if self._stopping:
                break
            connected_at = self._connected_at
            self._connected.clear()
            self.errors += 1
            stable = connected_at is not None and (
                self._delivered_since_connect > 0 or loop.time() - connected_at >= STREAM_STABLE_AFTER_S
            )
            failures = 1 if stable else failures + 1
            if broken_at is None or stable:
                broken_at = loop.time()
            if self._policy.max_attempts is not None and failures > self._policy.max_attempts:
                self._error = self._to_error(outcome)
                self._log(
                    logging.ERROR,
                    "stream_gave_up",
                    attempts=failures - 1,
                    code=outcome.code.name,
                    details=outcome.details,
                )
                break
            delay = self._policy.delay(failures)
            level = logging.WARNING if outcome.code in TRANSIENT_CODES else logging.ERROR
            event = "stream_broken" if connected_at is not None else "stream_attempt_failed"
            self._log(
                level,
                event,
                attempt=failures,
                backoff_s=round(delay, 3),
                up_s=round(loop.time() - (connected_at or started), 3),
                code=outcome.code.name,
                details=outcome.details,
            )
            await self._pause(delay)

    async def _subscribe_once(self, failures: int, broken_at: float | None) -> StreamBreak:
        """One subscription, from call to end; returns why it ended."""
        self._connected_at = None
        call = self._open_call()
        try:
            await call.initial_metadata()
            if call.done() and (code := await call.code()) != grpc.StatusCode.OK:
                return StreamBreak(code, await call.details() or "")
            self._connected_at = asyncio.get_running_loop().time()
            self._connected.set()
            if failures:
                await self._reconnected(failures, broken_at)
            while True:
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError as exc:
                    return StreamBreak(exc.code(), exc.details() or "")
                if message is grpc.aio.EOF:
                    return StreamBreak(grpc.StatusCode.OK, "the server ended the stream")
                await self._handle(cast(T, message))
                if self._stopping:
                    return StreamBreak(grpc.StatusCode.CANCELLED, "cancelled")
        finally:
            call.cancel()

    async def _reconnected(self, failures: int, broken_at: float | None) -> None:
        self.reconnects += 1
        gap = asyncio.get_running_loop().time() - broken_at if broken_at is not None else 0.0
        self._log(logging.INFO, "stream_reconnected", attempts=failures, gap_s=round(gap, 3))
        if self._on_reconnect is not None:
            await self._call_user("on_reconnect", self._on_reconnect)

    async def _handle(self, message: T) -> None:
        try:
            item = self._validate(message)
        except InvalidData as exc:
            self.invalid += 1
            self._log(logging.WARNING, "invalid_message_skipped", reason=str(exc))
            return
        if self._stopping:
            return
        self.delivered += 1
        self._delivered_since_connect += 1
        if self._callback is not None:
            await self._call_user("callback", self._callback, item)
        elif self._buffer is not None:
            await self._buffer.put(item)

    async def _call_user(self, what: str, function: Callable[..., object], *args: Any) -> None:
        """Run a user's callback or hook (sync or async); its failure is logged, never fatal."""
        try:
            result = function(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # a failing callback must not end the stream
            self._log(logging.ERROR, f"{what}_failed", reason=f"{type(exc).__name__}: {exc}", exc_info=True)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` s, or less if the channel was down and is connected again."""
        channel = self._channel
        if channel is None or channel.get_state() == grpc.ChannelConnectivity.READY:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(_until_ready(channel), delay)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------------------ helpers

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log(logging.ERROR, "stream_task_failed", reason=f"{type(exc).__name__}: {exc}")
        self._connected.clear()
        if self._buffer is not None:
            self._buffer.end(drop=False)  # after giving up, the reader still gets what arrived
        if self._on_finished is not None:
            self._on_finished(self)

    def _log(self, level: int, event: str, *, exc_info: bool = False, **fields: object) -> None:
        extra = {"event": event, "stream": self.name, "address": self._address, **fields}
        shown = " ".join(f"{key}={value}" for key, value in fields.items())
        self._logger.log(
            level,
            "%s %s stream %s %s",
            event,
            self.name,
            self._address,
            shown,
            extra=extra,
            exc_info=exc_info,
        )


async def _until_ready(channel: grpc.aio.Channel) -> None:
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


__all__ = ["StreamBreak", "StreamHandle"]
