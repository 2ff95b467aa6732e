"""GET /metrics served from the connector's own event loop: no thread per connection.

prometheus_client's start_http_server runs a thread per connection and never times one out (a
thousand idle connections are a thousand threads). Here every connection is a coroutine on the
loop, with a bound on connections, a deadline for the request head and one answer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 8192


class AsyncMetricsHttp:
    """An HTTP/1.1 endpoint for one registry: GET /metrics (200), anything else 404 or 405."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._open = 0
        self.refused = 0  # connections closed at once because MAX_CONNECTIONS were open

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            status, body, kind = self._answer(head.split(b"\r\n", 1)[0].decode("latin-1"))
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a slow, broken or oversized request: close it, nothing to tell
        finally:
            self._open -= 1
            writer.close()

    def _answer(self, request_line: str) -> tuple[str, bytes, str]:
        parts = request_line.split(" ")
        if len(parts) != 3:
            return "400 Bad Request", b"bad request\n", "text/plain"
        method, target, _ = parts
        if target.split("?", 1)[0] not in ("/metrics", "/"):
            return "404 Not Found", b"not found\n", "text/plain"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", "text/plain"
        return "200 OK", generate_latest(self._registry), CONTENT_TYPE_LATEST


__all__ = ["HEAD_TIMEOUT_S", "MAX_CONNECTIONS", "AsyncMetricsHttp"]
