"""A server stream the harness reads on the raw generated stub and reopens when it breaks: the same
client, with the same costs and the same reconnect policy, for every SUT (no implementation's
client library is in the measurement).

The loop: open the call, hand every message to `on_message`, and when the stream ends (any status
but our own cancellation) count the break, wait a backoff (doubling from `backoff_s`, capped at
`max_backoff_s`, reset by a message) and open it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

OpenCall = Callable[[], Any]  # returns a grpc.aio stream call (an async iterator of messages)


@dataclass
class StreamCounts:
    messages: int = 0
    breaks: int = 0  # the stream ended with a status other than our cancellation
    reopens: int = 0  # new calls after a break
    last_status: str = ""
    last_details: str = ""
    statuses: dict[str, int] = field(default_factory=dict)


class ReconnectingStream:
    """start() runs the read loop as a task; stop() cancels it and waits for it to end."""

    def __init__(
        self,
        name: str,
        open_call: OpenCall,
        on_message: Callable[[Any], None],
        *,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
    ) -> None:
        self.name = name
        self._open_call = open_call
        self._on_message = on_message
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self.counts = StreamCounts()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ReconnectingStream:
        self._task = asyncio.create_task(self._run(), name=f"stream {self.name}")
        return self

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        delay = self._backoff_s
        first = True
        while True:
            if not first:
                self.counts.reopens += 1
            first = False
            call = self._open_call()
            try:
                async for message in call:
                    self.counts.messages += 1
                    delay = self._backoff_s
                    self._on_message(message)
                self._record_end("OK", "stream ended by the server")
            except grpc.aio.AioRpcError as error:
                self._record_end(error.code().name, error.details() or "")
            finally:
                call.cancel()  # a no-op once the call has ended; ends it when we are cancelled
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff_s)

    def _record_end(self, status: str, details: str) -> None:
        self.counts.breaks += 1
        self.counts.last_status, self.counts.last_details = status, details
        self.counts.statuses[status] = self.counts.statuses.get(status, 0) + 1
