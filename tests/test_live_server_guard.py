"""live_server's connection guard: rate-limited warnings and making room at the limit (the library)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from implementation.live_server import guard
from tests.conftest import uvicorn_serving

pytestmark = pytest.mark.timeout(10)


def test_rate_limited_warning_logs_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warning = guard.RateLimitedWarning("connection_limit", clock=lambda: now[0], limit="10")
    with caplog.at_level(logging.WARNING, logger="live_server.http"):
        for step in range(25):
            now[0] = step
            warning.note()
    counts = [record.fields["count"] for record in caplog.records]  # type: ignore[attr-defined]
    assert counts == ["1", "10", "10"], f"expected lines at 0, 10 and 20 s with counts, got {counts}"
    assert warning.total == 25


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _protocol() -> Any:
    protocol = type("Fake", (), {})()
    protocol.transport = _Transport()
    return protocol


def test_make_room_closes_the_oldest_waiting_connection_only_at_the_limit() -> None:
    limits = guard.ConnectionGuard(header_timeout_s=5, max_connections=3)
    old, newer, newcomer = _protocol(), _protocol(), _protocol()
    for protocol in (old, newer, newcomer):
        limits.waiting[cast(H11Protocol, protocol)] = None
    limits.make_room(2, cast(H11Protocol, newcomer))
    assert not old.transport.closed, "expected nothing closed below the limit"
    limits.make_room(3, cast(H11Protocol, newcomer))
    assert old.transport.closed and not newer.transport.closed and not newcomer.transport.closed
    assert list(limits.waiting) == [newer, newcomer] and limits.refused.total == 1


def test_make_room_leaves_busy_connections_alone() -> None:
    limits = guard.ConnectionGuard(header_timeout_s=5, max_connections=1)
    newcomer = _protocol()
    limits.waiting[cast(H11Protocol, newcomer)] = None
    limits.make_room(5, cast(H11Protocol, newcomer))
    assert not newcomer.transport.closed and limits.refused.total == 0, "nothing waiting: the 503 decides"


# ---------------------------------------------------------------------- on a real uvicorn server


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def guarded_server(limits: guard.ConnectionGuard) -> AsyncIterator[int]:
    protocol = guard.guarded_protocol(limits)
    async with uvicorn_serving(_hello, http=protocol, limit_concurrency=limits.max_connections) as port:
        yield port


async def _request(
    port: int, head: bytes = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
) -> tuple[Any, Any, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = await asyncio.wait_for(reader.readuntil(b"ok"), 5) if head.endswith(b"\r\n\r\n") else b""
    return reader, writer, answer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except (ConnectionError, TimeoutError):
        return True


@pytest.mark.asyncio
async def test_idle_connection_makes_room_and_an_unfinished_head_times_out() -> None:
    limits = guard.ConnectionGuard(header_timeout_s=0.5, max_connections=3)
    async with guarded_server(limits) as port:
        idle = await _request(port)  # served, then idle on keep-alive
        unfinished = await _request(port, b"GET / HTTP/1.1\r\n")
        await asyncio.sleep(0.05)  # both seen by the server, in this order
        newcomer = await _request(port)  # the third: the oldest connection with no request makes room
        assert b"200" in idle[2] and b"200" in newcomer[2], (
            f"expected both served, got {idle[2]!r}, {newcomer[2]!r}"
        )
        assert await _closed_by_server(idle[0]), "expected the oldest idle connection closed to make room"
        assert await _closed_by_server(unfinished[0]), "expected the unfinished head closed after its timeout"
        assert (limits.refused.total, limits.timed_out.total) == (1, 1), (
            f"expected one made room and one timed out, got {limits.refused.total}, {limits.timed_out.total}"
        )
        for _, writer, _ in (idle, unfinished, newcomer):
            writer.close()
