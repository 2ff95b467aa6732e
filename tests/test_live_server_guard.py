"""live_server's connection guard: rate-limited warnings and making room at the limit (the library)."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from implementation.live_server import guard

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
