"""HTTP connection limits for live_server: a request-head timeout and a cap on open connections.

uvicorn closes idle keep-alive connections, but a connection that starts a request and never
finishes its head (slowloris) is held forever. GuardedH11Protocol closes such a connection
`header_timeout_s` after it opened or after its head began. At `max_connections` open
connections, a new one makes room by closing the oldest connection with no request in progress
(still waiting for its request head, or idle between requests), so slowloris of any size cannot
lock out real requests; when there is none (every connection is a request being served or a
WebSocket), new requests (upgrades too) get uvicorn's 503 at once. Both are logged as warnings, at most one line per LOG_INTERVAL_S per kind, each with the
count since the last line: an attack must not become a log flood.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from implementation.logs import log_event

LOG_INTERVAL_S = 10.0
FD_HEADROOM = 256  # files beyond the connections: the gRPC channel, logs, static files
_log = logging.getLogger("live_server.http")


class RateLimitedWarning:
    """Counts occurrences of one event; logs the first at once, then at most one line per interval."""

    def __init__(self, event: str, clock: Callable[[], float] = time.monotonic, **fields: str) -> None:
        self._event, self._fields, self._clock = event, fields, clock
        self._last: float | None = None
        self.total = 0
        self._unlogged = 0

    def note(self, **fields: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = self._clock()
        if self._last is None or now - self._last >= LOG_INTERVAL_S:
            self._last = now
            log_event(
                _log,
                self._event,
                level=logging.WARNING,
                count=str(self._unlogged),
                total=str(self.total),
                **self._fields,
                **fields,
            )
            self._unlogged = 0


class ConnectionGuard:
    """The limits shared by every connection of one server, and what they have refused."""

    def __init__(self, header_timeout_s: float, max_connections: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.refused = RateLimitedWarning("connection_limit", limit=str(max_connections))
        self.timed_out = RateLimitedWarning("header_timeout", timeout_s=str(header_timeout_s))
        # Connections with no request in progress, oldest first: the ones to close to make room.
        self.waiting: dict[H11Protocol, None] = {}

    def make_room(self, open_connections: int, newcomer: H11Protocol) -> None:
        if open_connections < self.max_connections:
            return
        victim = next((p for p in self.waiting if p is not newcomer), None)
        if victim is None:
            return  # every connection is busy: the newcomer's request gets 503
        del self.waiting[victim]
        self.refused.note(open=str(open_connections), action="closed the oldest idle or unfinished")
        victim.transport.close()


def guarded_protocol(limits: ConnectionGuard) -> type[H11Protocol]:
    """An H11Protocol class that enforces `limits` (uvicorn builds one instance per connection)."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()
            limits.make_room(len(self.connections), self)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # uvicorn's check counts every open connection; those with no request in progress can be
            # closed to make room, so only the others count against the limit.
            self.limit_concurrency = limits.max_connections + len(limits.waiting)
            super().data_received(data)
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                self._stop_head_timer()  # the head is complete (or the connection is gone)
            else:
                self._start_head_timer()  # a head has begun (again, on a kept-alive connection)

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request at once
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                limits.waiting[self] = None  # idle between requests: may be closed to make room

        def _should_upgrade(self) -> bool:
            # uvicorn checks its limit only for plain requests: an upgrade over it gets the 503 too.
            return not self._over_limit() and super()._should_upgrade()

        def handle_events(self) -> None:
            was_idle = self.conn.their_state is h11.IDLE
            super().handle_events()
            if was_idle and self.conn.their_state is not h11.IDLE and self._over_limit():
                limits.refused.note(open=str(len(self.connections)), action="answered 503")

        def _over_limit(self) -> bool:
            busy = len(self.connections) - len(limits.waiting)
            return busy >= limits.max_connections or len(self.tasks) >= limits.max_connections

        def _start_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)
                limits.waiting[self] = None

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            limits.waiting.pop(self, None)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            limits.waiting.pop(self, None)
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a response is still being written (pipelining): not an idle head
            limits.timed_out.note()
            self.transport.close()

    return GuardedH11Protocol


class _QuietLimitMessage(logging.Filter):
    """uvicorn logs every refused request; the guard's counted line replaces those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Exceeded concurrency limit."


def silence_uvicorn_limit_lines() -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietLimitMessage())


def raise_file_limit(max_connections: int) -> int:
    """Lift the soft open-file limit so `max_connections` sockets fit (up to the hard limit): a
    full descriptor table would refuse every connection, the good ones too. The soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft
