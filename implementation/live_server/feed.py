"""WebSocket fan-out: every update goes to every connected browser, none can stall the others.

Each client has its own bounded queue of already-encoded messages. publish() never waits: a
client whose queue is full (it stopped reading, or reads too slowly) is dropped at once and its
socket is closed with code 1013 ("try again later"); a browser reconnects and gets a fresh
snapshot, so a dropped client never shows stale data silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from implementation.state import LiveState, StateChange, message_fields

TRY_AGAIN_LATER = 1013  # WebSocket close code: the server dropped a client that fell behind
CLOSE_TIMEOUT_S = 1.0

_log = logging.getLogger(__name__)


class Subscriber:
    def __init__(self, queue_size: int) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.dropped = asyncio.Event()


class Broadcaster:
    def __init__(self, queue_size: int = 256) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self.dropped_total = 0

    @property
    def client_count(self) -> int:
        return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        subscriber = Subscriber(self.queue_size)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    def publish(self, message: dict[str, Any]) -> None:
        """Queue one message for every client; drop (never wait for) a client whose queue is full."""
        if not self._subscribers:
            return
        text = json.dumps(message, separators=(",", ":"))
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._subscribers.discard(subscriber)
                subscriber.dropped.set()
                self.dropped_total += 1
                _log.warning("websocket client dropped: its queue of %d messages is full", self.queue_size)


def change_message(change: StateChange, state: LiveState) -> dict[str, Any]:
    """The JSON message a browser receives for one state change."""
    if change.kind == "account" and change.account is not None:
        return {"type": "account", "data": message_fields(change.account)}
    if change.kind == "position" and change.position is not None:
        return {"type": "position", "data": message_fields(change.position)}
    if change.kind == "snapshot":
        return {"type": "snapshot", "data": state.snapshot()}
    return {"type": "status", "data": state.status()}


def connect_state(state: LiveState, broadcaster: Broadcaster) -> None:
    """Publish every change of `state` to the WebSocket clients."""
    state.add_listener(lambda change: broadcaster.publish(change_message(change, state)))


async def serve_client(websocket: WebSocket, state: LiveState, broadcaster: Broadcaster) -> None:
    """One WebSocket client: a snapshot first, then every update, until it leaves or is dropped."""
    await websocket.accept()
    async with broadcaster.subscribe() as subscriber:
        # Subscribed before the snapshot is taken, with no await in between: nothing is missed.
        first = json.dumps({"type": "snapshot", "data": state.snapshot()}, separators=(",", ":"))
        sender = asyncio.ensure_future(_send_loop(websocket, subscriber, first))
        receiver = asyncio.ensure_future(_receive_until_closed(websocket))
        dropped = asyncio.ensure_future(subscriber.dropped.wait())
        tasks = {sender, receiver, dropped}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if dropped in done or sender in done:
            await _close_quietly(
                websocket, TRY_AGAIN_LATER, "client too slow; reconnect for a fresh snapshot"
            )


async def _send_loop(websocket: WebSocket, subscriber: Subscriber, first: str) -> None:
    await websocket.send_text(first)
    while True:
        await websocket.send_text(await subscriber.queue.get())


async def _receive_until_closed(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends; return when it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    # A client that never reads may never take the close frame either: give it a moment, no more.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code=code, reason=reason), timeout=CLOSE_TIMEOUT_S)
