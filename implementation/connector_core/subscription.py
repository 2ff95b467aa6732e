"""One subscriber of the hub: a bounded mailbox filled by the fan-out and read by one stream loop.

The fan-out never waits: put_nowait() answers False when the mailbox is full, and the hub then
drops the subscriber. The reader awaits next(), which only suspends when the mailbox is empty
(one future per wait, none per message while updates are queued). Each queued update carries the
time it counts from (when the connector read it), so lag() says how long the
oldest update has waited for this subscriber: its stream loop takes the next one only once the
transport accepted the one before, so a reader slower than the updates shows here as growing lag.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType

import grpc

from opensqt.exchange.v1 import exchange_pb2 as pb

Message = pb.Account | pb.Position


class SubscriptionEnded(Exception):
    """The hub ended a subscription; the stream ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Subscription:
    """One subscriber: a bounded mailbox filled by the fan-out, read by one stream loop.

    Use as `async with hub.subscribe(...) as sub:` and `await sub.next()` (or `async for`);
    next() raises SubscriptionEnded once the hub ends it and the queue is drained. Entering the
    block registers it (`on_enter`), leaving it in any way removes it (`on_exit`)."""

    __slots__ = (
        "_end", "_items", "_on_enter", "_on_exit", "_stamps", "_waiter", "capacity", "mark", "offered",
        "offered_mark", "peer", "symbol", "topic",
    )  # fmt: skip

    def __init__(
        self,
        topic: str,
        symbol: str,
        peer: str,
        capacity: int,
        *,
        on_enter: Callable[[Subscription], None],
        on_exit: Callable[[Subscription, BaseException | None], None],
    ) -> None:
        self._on_enter = on_enter
        self._on_exit = on_exit
        self.topic = topic
        self.symbol = symbol  # positions only: "" = every symbol
        self.peer = peer
        self.capacity = capacity
        self.mark = 0  # the queue's length when the hub's watchdog last looked (overload: catching up?)
        # updates queued for it since it subscribed, and as the watchdog last saw them: with the
        # queue's length, what its stream loop took against what it was offered
        self.offered = self.offered_mark = 0
        self._items: deque[Message] = deque()
        self._stamps: deque[float] = deque()  # time.monotonic() each queued update counts from
        self._waiter: asyncio.Future[None] | None = None
        self._end: tuple[grpc.StatusCode, str] | None = None

    @property
    def queued(self) -> int:
        return len(self._items)

    @property
    def ended(self) -> bool:
        return self._end is not None

    def lag(self, now: float) -> float:
        """Seconds the oldest queued update has waited (counted from its stamp); 0 when none waits."""
        stamps = self._stamps
        return now - stamps[0] if stamps else 0.0

    def put_nowait(self, message: Message, stamp: float = 0.0) -> bool:
        """Queue `message` (its lag counted from `stamp`, a time.monotonic() value); False (nothing
        queued) when the queue is full or the subscription ended."""
        if len(self._items) >= self.capacity or self._end is not None:
            return False
        self._items.append(message)
        self._stamps.append(stamp)
        self.offered += 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def end(self, code: grpc.StatusCode, details: str, *, discard: bool) -> None:
        """End with this status once the queue is drained (at once when `discard`); first end wins."""
        if self._end is not None:
            return
        self._end = (code, details)
        if discard:
            self._items.clear()
            self._stamps.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Message:
        """The next update, waiting for one; SubscriptionEnded when the hub ended this subscription."""
        items = self._items
        while not items:
            if self._end is not None:
                raise SubscriptionEnded(*self._end)
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        self._stamps.popleft()
        return items.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        return await self.next()

    async def __aenter__(self) -> Subscription:
        self._on_enter(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._on_exit(self, exc)


__all__ = ["Message", "Subscription", "SubscriptionEnded"]
