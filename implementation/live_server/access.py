"""Who may talk to live_server: the Host allow-list (DNS rebinding) and the /ws Origin check.

A web page anywhere can make the operator's browser send requests to 127.0.0.1; what it cannot
forge is the Host header (after DNS rebinding it names the attacker's domain) and the Origin of
a WebSocket handshake (its own page). So HTTP and WebSocket requests naming a Host outside
`allowed_hosts` get 421, and a WebSocket handshake whose Origin is not allowed is refused (403)
before any data is sent. Clients that are not browsers send no Origin, and stay welcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from implementation.live_server.guard import RateLimitedWarning

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
ANY = "*"
POLICY_VIOLATION = 1008  # WebSocket close code; before accept(), uvicorn answers the handshake 403
_log = logging.getLogger("live_server.http")


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or brackets, lower-case: "[::1]:80" -> "::1"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def origin_key(origin: str) -> str | None:
    """An Origin as "scheme://host[:port]", lower-case; None when it is not one (e.g. "null")."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        return None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class AccessPolicy:
    def __init__(
        self,
        listen_host: str,
        allowed_hosts: Iterable[str] | None = None,
        allowed_origins: Iterable[str] | None = None,
    ) -> None:
        if allowed_hosts is None:
            defaults = list(LOOPBACK_NAMES)
            if listen_host.lower() not in WILDCARD_HOSTS:
                defaults.append(listen_host)
            allowed_hosts = defaults
        self.hosts = frozenset(host_name(host) if host != ANY else ANY for host in allowed_hosts)
        self.origins: frozenset[str] | None = None  # None: any origin on an allowed host
        if allowed_origins is not None:
            self.origins = frozenset(
                ANY if origin == ANY else origin_key(origin) or origin.lower() for origin in allowed_origins
            )

    def allows_host(self, host_header: str | None) -> bool:
        # A request with no Host is no browser's (every browser sends one): nothing to rebind.
        return host_header is None or ANY in self.hosts or host_name(host_header) in self.hosts

    def allows_origin(self, origin: str | None) -> bool:
        if origin is None:
            return True
        key = origin_key(origin)
        if self.origins is not None:
            return ANY in self.origins or (key is not None and key in self.origins)
        hostname = urlsplit(key).hostname if key is not None else None
        return hostname is not None and (ANY in self.hosts or hostname in self.hosts)


class AccessCheck:
    """ASGI middleware enforcing an AccessPolicy before the app sees a request."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self._app = app
        self._policy = policy
        self.refused = RateLimitedWarning("request_refused")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host, origin = headers.get("host"), headers.get("origin")
        if not self._policy.allows_host(host):
            self.refused.note(reason="host not allowed", host=str(host)[:100])
            await _refuse(scope, send, 421, "misdirected request", f"host {host!r} is not served here")
            return
        if scope["type"] == "websocket" and not self._policy.allows_origin(origin):
            self.refused.note(reason="origin not allowed", origin=str(origin)[:100])
            await _refuse(scope, send, 403, "forbidden", f"origin {origin!r} may not open this feed")
            return
        await self._app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, error: str, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": ""})
        return
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
