"""ThreadedExchange: an Exchange whose upstream I/O runs on an event loop of its own thread.

Why: on one event loop the upstream read and the writes to every subscriber run in lockstep. Each
`await read()` resumes only on the loop's next pass, and a pass under fan-out is one write per
subscriber stream, so a connector writing to 15 subscribers reads one update per 15 writes. When
the writes fall behind, the updates wait unread in the upstream transport, where nothing can see
how long they waited for whom. With the reader on a loop of its own (grpc.aio runs one loop per
thread), it reads as the exchange writes, and the main loop takes everything read since its last
pass in one batch: the backlog, if any, sits in the subscribers' mailboxes, where the hub measures
what each subscriber is owed (C34) and what they are owed together (C38).

The inner exchange is built on the upstream thread (a grpc.aio channel belongs to the loop it is
made on). Every call and stream of the Exchange interface is run there and awaited from the
caller's loop; cancelling the caller cancels the upstream side. Stream callbacks run on the
caller's loop, in the order the upstream read the updates, and never after the stream's caller
has returned.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from implementation.adapters.interface import Exchange
from opensqt.exchange.v1 import exchange_pb2 as pb

T = TypeVar("T")
M = TypeVar("M")
THREAD_NAME = "upstream-loop"
JOIN_TIMEOUT_S = 5.0


class _Handoff(Generic[M]):
    """Updates read on the upstream thread, delivered to `callback` on the caller's loop in batches:
    one loop callback per batch, not per update."""

    __slots__ = ("_callback", "_closed", "_items", "_loop", "_scheduled", "failure")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[M], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._items: deque[M] = deque()
        self._scheduled = False
        self._closed = False
        self.failure: asyncio.Future[None] = loop.create_future()

    def put(self, item: M) -> None:
        """Called on the upstream thread for every update read."""
        self._items.append(item)
        if not self._scheduled:
            # deque.append and this flag are safe under the GIL: the drain clears the flag before it
            # empties the deque, so an update appended after its last pop schedules a drain of its own
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        items, callback = self._items, self._callback
        while items and not self._closed:
            try:
                callback(items.popleft())
            except Exception as exc:  # as if raised by the reader: the stream ends with it
                self._closed = True
                if not self.failure.done():
                    self.failure.set_exception(exc)

    def close(self) -> None:
        """Deliver nothing more (the stream's caller has returned)."""
        self._closed = True
        self._items.clear()


class ThreadedExchange:
    """The Exchange `make_exchange()` builds, run on an event loop of its own thread."""

    def __init__(self, make_exchange: Callable[[], Exchange]) -> None:
        self._make_exchange = make_exchange
        self._inner: Exchange | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def thread(self) -> threading.Thread | None:
        """The upstream thread, once started."""
        return self._thread

    def __getattr__(self, name: str) -> Any:
        # adapter attributes a caller reads (e.g. `address`) come from the inner exchange
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    # ------------------------------------------------------------------ the Exchange interface

    async def connect(self) -> None:
        await self._run(lambda exchange: exchange.connect())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._inner is not None:
                inner = self._inner
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(inner.close(), loop))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, JOIN_TIMEOUT_S)

    async def get_account(self) -> pb.Account:
        return await self._run(lambda exchange: exchange.get_account())

    async def get_positions(self, symbol: str = "") -> list[pb.Position]:
        return await self._run(lambda exchange: exchange.get_positions(symbol))

    async def run_account_stream(self, callback: Callable[[pb.Account], None]) -> None:
        await self._stream(callback, lambda exchange, put: exchange.run_account_stream(put))

    async def run_position_stream(self, callback: Callable[[pb.Position], None]) -> None:
        await self._stream(callback, lambda exchange, put: exchange.run_position_stream(put))

    # ------------------------------------------------------------------ the thread

    async def _stream(
        self,
        callback: Callable[[M], None],
        start: Callable[[Exchange, Callable[[M], None]], Awaitable[None]],
    ) -> None:
        handoff: _Handoff[M] = _Handoff(asyncio.get_running_loop(), callback)
        reading = asyncio.ensure_future(self._run(lambda exchange: start(exchange, handoff.put)))
        try:
            await asyncio.wait((reading, handoff.failure), return_when=asyncio.FIRST_COMPLETED)
            if handoff.failure.done():
                handoff.failure.result()  # raises what the callback raised
            reading.result()
        finally:
            handoff.close()
            reading.cancel()
            handoff.failure.cancel()

    async def _run(self, call: Callable[[Exchange], Awaitable[T]]) -> T:
        loop = self._upstream_loop()

        async def on_upstream() -> T:
            if self._inner is None:
                self._inner = self._make_exchange()
            return await call(self._inner)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_upstream(), loop))

    def _upstream_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("the upstream exchange is closed")
        if self._loop is None:
            loop = _new_loop()
            thread = threading.Thread(target=_run_forever, args=(loop,), name=THREAD_NAME, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (as the connector's own loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # whatever is still running there (a stream cancelled a moment ago) ends with the loop
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


__all__ = ["ThreadedExchange"]
