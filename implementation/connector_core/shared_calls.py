"""Concurrent calls for the same key share one call in flight (GetPositions to the upstream).

A burst of clients asking for the same symbol then costs the exchange one call, not one each: the
exchange's rate limits are not at the mercy of the clients. A caller that goes away (cancelled)
leaves the shared call running for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SharedCalls(Generic[K, T]):
    """call(key, start) awaits the call in flight for `key`, or starts one with `start()`."""

    def __init__(self) -> None:
        self._in_flight: dict[K, asyncio.Future[T]] = {}
        self.started = 0  # calls really made
        self.joined = 0  # callers that shared a call already in flight

    async def call(self, key: K, start: Callable[[], Awaitable[T]]) -> T:
        shared = self._in_flight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(start())
            self._in_flight[key] = shared
            self.started += 1
            shared.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.joined += 1
        return await asyncio.shield(shared)

    def _finished(self, key: K, done: asyncio.Future[T]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # retrieved here too, for when every caller went away first


__all__ = ["SharedCalls"]
