"""A deliberately faulty live_server: the reference program with ONE fault patched in.

    python -m specs.faulty.live_server --fault NAME --config FILE ...

Everything after the fault's name is the reference live_server's command line. As with the faulty
connectors (connector.py), the fault is a small change to the reference's classes and functions,
made in this process before the reference's main() runs; faults.yaml says which scenarios catch it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket
from uvicorn.protocols.http.h11_impl import H11Protocol

from implementation.clients import UpdateLog
from implementation.config import LiveServerConfig
from implementation.live_server import __main__ as live_server_main
from implementation.live_server import access, app, feed, guard
from implementation.logs import log_event
from implementation.state import LiveState, StateChange, message_fields
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.faulty.registry import FaultRegistry

fault = FaultRegistry("specs.faulty.live_server", "FLAGS...")
FAULTS = fault.faults


@fault("no-header-timeout")
def no_header_timeout() -> None:
    """A connection whose request head never ends is held for ever (slowloris)."""
    make = guard.guarded_protocol

    def guarded_protocol(limits: guard.ConnectionGuard) -> type[H11Protocol]:
        protocol = make(limits)
        protocol._start_head_timer = lambda self: None  # type: ignore[attr-defined]
        return protocol

    guard.guarded_protocol = guarded_protocol


@fault("no-connection-limit")
def no_connection_limit() -> None:
    """Connections are never limited: no 503, no room made, no connection_limit line."""
    init = guard.ConnectionGuard.__init__

    def unlimited(self: guard.ConnectionGuard, header_timeout_s: float, max_connections: int) -> None:
        init(self, header_timeout_s, 10**9)

    guard.ConnectionGuard.__init__ = unlimited  # type: ignore[method-assign]


@fault("no-origin-check")
def no_origin_check() -> None:
    """/ws accepts a handshake from any Origin (any web page can read the account)."""
    access.AccessPolicy.allows_origin = lambda self, origin: True  # type: ignore[method-assign]


@fault("no-host-check")
def no_host_check() -> None:
    """Any Host header is served (DNS rebinding reads the balances)."""
    access.AccessPolicy.allows_host = lambda self, host_header: True  # type: ignore[method-assign]


@fault("stale-api")
def stale_api() -> None:
    """/api/account and /api/positions keep answering 200 with the last data after the connector is lost."""
    unavailable = app._unavailable

    def only_when_empty(state: LiveState) -> JSONResponse | None:
        return unavailable(state) if not state.has_data else None

    app._unavailable = only_when_empty


@fault("stale-bare-503")
def stale_bare_503() -> None:
    """Once the connector is lost, /api/account and /api/positions answer a bare 503 (Retry-After,
    no body), not a JSON error."""
    unavailable = app._unavailable

    def bare(state: LiveState) -> Response | None:
        refusal = unavailable(state)
        if refusal is None or not state.has_data:
            return refusal
        return Response(status_code=503, headers={"Retry-After": "1"})

    app._unavailable = bare  # type: ignore[assignment]


@fault("config-extra-ignored")
def config_extra_ignored() -> None:
    """The config model takes pydantic's default for unknown keys (ignore), not forbid: a typo of
    a key is dropped in silence and the program runs on its default."""
    LiveServerConfig.model_config["extra"] = "ignore"
    LiveServerConfig.model_rebuild(force=True)


@fault("api-float-decimals")
def api_float_decimals() -> None:
    """/api/account and /api/positions render decimal fields as JSON numbers (floats), not the
    strings the exchange sent (the WebSocket feed is unchanged)."""

    def numeric_fields(message: Message) -> dict[str, Any]:
        fields: dict[str, Any] = message_fields(message)
        for name, value in fields.items():
            with contextlib.suppress(ValueError):
                fields[name] = float(value)
        return fields

    app.message_fields = numeric_fields  # type: ignore[attr-defined]


@fault("update-log-unsampled")
def update_log_unsampled() -> None:
    """The update log is built without the config's `log` settings, so its default applies: every
    account and position update logged at info, none sampled."""
    make = live_server_main.UpdateLog  # type: ignore[attr-defined]

    def without_settings(state: LiveState, logger: logging.Logger, *rest: Any) -> UpdateLog:
        return make(state, logger)

    live_server_main.UpdateLog = without_settings  # type: ignore[attr-defined,assignment]


@fault("uvicorn-signals")
def uvicorn_signals() -> None:
    """uvicorn is embedded with its own signal handling: SIGTERM stops the HTTP server under the
    program's feet, which takes it for a failure (an error line, exit code 1)."""
    live_server_main._Server = uvicorn.Server  # type: ignore[misc,assignment]


@fault("limit-line-at-info")
def limit_line_at_info() -> None:
    """The connection_limit line (counted, one per 10 s) is logged at info level, not warning."""

    def at_info(
        logger: logging.Logger, event: str, *, level: int | str = logging.INFO, **fields: Any
    ) -> None:
        log_event(logger, event, level=logging.INFO if event == "connection_limit" else level, **fields)

    guard.log_event = at_info  # type: ignore[attr-defined]


@fault("kept-alive-no-header-timeout")
def kept_alive_no_header_timeout() -> None:
    """The request-head timer is armed once per connection, when it opens: a kept-alive connection
    that starts a second request and never ends its head is held for ever."""
    make = guard.guarded_protocol

    def guarded_protocol(limits: guard.ConnectionGuard) -> type[H11Protocol]:
        protocol = make(limits)
        start = protocol._start_head_timer  # type: ignore[attr-defined]

        def start_once(self: H11Protocol) -> None:
            if not getattr(self, "_head_timer_armed", False):
                self._head_timer_armed = True  # type: ignore[attr-defined]
                start(self)

        protocol._start_head_timer = start_once  # type: ignore[attr-defined]
        return protocol

    guard.guarded_protocol = guarded_protocol


@fault("limit-line-per-connection")
def limit_line_per_connection() -> None:
    """Every connection refused or closed at the limit logs its own connection_limit line (a flood
    under attack), not one line per 10 s with a count."""

    class EveryTime(guard.RateLimitedWarning):
        def note(self, **fields: str) -> None:
            self.total += 1
            log_event(guard._log, "connection_limit", level="warning", count="1", **fields)

    init = guard.ConnectionGuard.__init__

    def each_logged(self: guard.ConnectionGuard, header_timeout_s: float, max_connections: int) -> None:
        init(self, header_timeout_s, max_connections)
        self.refused = EveryTime("connection_limit", limit=str(max_connections))

    guard.ConnectionGuard.__init__ = each_logged  # type: ignore[method-assign]


@fault("ws-default-size-limit")
def ws_default_size_limit() -> None:
    """uvicorn is started without the configured WebSocket message limit, so its default of 16 MiB
    applies: a 1 MiB + 1 message is taken, not refused with 1009."""
    init = uvicorn.Config.__init__

    def without_ws_limit(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("ws_max_size", None)
        init(self, *args, **kwargs)

    uvicorn.Config.__init__ = without_ws_limit  # type: ignore[method-assign]


@fault("origin-without-port")
def origin_without_port() -> None:
    """/ws compares the Origin with "http://<allowed host>", port left out: the server's own page
    (http://127.0.0.1:PORT) is refused, so its dashboard cannot open the feed."""

    def allows_origin(self: access.AccessPolicy, origin: str | None) -> bool:
        if origin is None:
            return True
        allowed = {f"{scheme}://{host}" for host in self.hosts for scheme in ("http", "https")}
        return access.ANY in self.hosts or origin.strip().lower() in allowed

    access.AccessPolicy.allows_origin = allows_origin  # type: ignore[method-assign]


@fault("origin-required")
def origin_required() -> None:
    """/ws refuses a handshake with no Origin, as if it were a foreign one: clients that are not
    browsers cannot open the feed."""
    allows_origin = access.AccessPolicy.allows_origin

    def origin_required(self: access.AccessPolicy, origin: str | None) -> bool:
        return origin is not None and allows_origin(self, origin)

    access.AccessPolicy.allows_origin = origin_required  # type: ignore[method-assign]


@fault("listen-host-only")
def listen_host_only() -> None:
    """The default Host allow-list holds the listen host alone, not the loopback names: with
    listen 127.0.0.1, a request for http://localhost:PORT/ gets 421."""
    access.LOOPBACK_NAMES = ()  # type: ignore[assignment]


@fault("health-on-data")
def health_on_data() -> None:
    """Ready means "holds data": /health keeps answering 200 after the connector is lost."""
    LiveState.ready = property(lambda self: self.has_data)  # type: ignore[method-assign,assignment]


@fault("positions-unfiltered")
def positions_unfiltered() -> None:
    """/api/positions checks ?symbol= and then answers every position, not only that symbol's."""

    def every_position(self: LiveState, symbol: str = "") -> list[pb.Position]:
        return list(self.positions.values())  # the symbol asked for is never looked at

    LiveState.position_list = every_position  # type: ignore[method-assign]


@fault("symbol-unchecked")
def symbol_unchecked() -> None:
    """/api/positions takes any ?symbol= as a filter: a malformed one gets 200 and no positions, not a 4xx."""
    app.check_symbol = lambda symbol: symbol  # type: ignore[attr-defined]


@fault("api-fallback-page")
def api_fallback_page() -> None:
    """A single-page-app fallback: every unknown GET path, /api/... too, gets the dashboard with 200."""
    create = live_server_main.create_app  # type: ignore[attr-defined]

    def with_fallback(*args: Any, **kwargs: Any) -> FastAPI:
        served = create(*args, **kwargs)

        @served.get("/{path:path}", include_in_schema=False)
        async def fallback(path: str) -> Response:
            return FileResponse(app.STATIC_DIR / "index.html")

        return served

    live_server_main.create_app = with_fallback  # type: ignore[attr-defined]


@fault("api-naive-timestamp")
def api_naive_timestamp() -> None:
    """/api/account renders updated_at with Python's isoformat of a naive UTC datetime: no offset,
    so it is not RFC 3339 (the WebSocket feed is unchanged)."""

    def naive_fields(message: Message) -> dict[str, str]:
        fields = message_fields(message)
        for descriptor in message.DESCRIPTOR.fields:
            value = getattr(message, descriptor.name)
            if isinstance(value, Timestamp) and message.HasField(descriptor.name):
                fields[descriptor.name] = value.ToDatetime().isoformat()
        return fields

    app.message_fields = naive_fields  # type: ignore[attr-defined]


@fault("ws-serial-send")
def ws_serial_send() -> None:
    """One task sends each update to every /ws client in turn: a client that stops reading blocks
    the send to it, and every other client waits behind it."""
    clients: list[WebSocket] = []
    pending: asyncio.Queue[str] = asyncio.Queue()
    senders: list[asyncio.Future[None]] = []

    def publish(self: feed.Broadcaster, message: dict[str, Any]) -> None:
        pending.put_nowait(json.dumps(message, separators=(",", ":")))

    async def fan_out() -> None:
        while True:
            text = await pending.get()
            for websocket in list(clients):
                try:
                    await websocket.send_text(text)
                except Exception:
                    with contextlib.suppress(ValueError):
                        clients.remove(websocket)

    async def serve_client(websocket: WebSocket, state: LiveState, broadcaster: feed.Broadcaster) -> None:
        await websocket.accept()
        if not senders:
            senders.append(asyncio.ensure_future(fan_out()))
        await websocket.send_text(json.dumps({"type": "snapshot", "data": state.snapshot()}))
        clients.append(websocket)
        try:
            await feed._receive_until_closed(websocket)
        finally:
            with contextlib.suppress(ValueError):
                clients.remove(websocket)

    feed.Broadcaster.publish = publish  # type: ignore[method-assign]
    app.serve_client = serve_client  # type: ignore[attr-defined]


@fault("ws-topic-type")
def ws_topic_type() -> None:
    """/ws types position updates by their gRPC topic, "positions", not "position"."""
    change_message = feed.change_message

    def topic_typed(change: StateChange, state: LiveState) -> dict[str, Any]:
        message = change_message(change, state)
        if message["type"] == "position":
            message["type"] = "positions"
        return message

    feed.change_message = topic_typed


@fault("dashboard-plural-type")
def dashboard_plural_type() -> None:
    """The dashboard's script expects position updates as type "positions" while the feed sends
    "position": the page shows the snapshot and never a new position."""
    folder = Path(tempfile.mkdtemp(prefix="live-server-static-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    static = folder / "static"
    shutil.copytree(app.STATIC_DIR, static)
    script = static / "dashboard.js"
    text = script.read_text(encoding="utf-8")
    if 'case "position":' not in text:
        raise RuntimeError(f"{script}: no 'case \"position\":' to break")
    script.write_text(text.replace('case "position":', 'case "positions":'), encoding="utf-8")
    app.STATIC_DIR = static


def main(argv: Sequence[str] | None = None) -> int:
    rest = fault.apply_from(sys.argv[1:] if argv is None else argv)
    if rest is None:
        return 2
    return live_server_main.main(rest)


__all__ = ["FAULTS", "main"]

if __name__ == "__main__":
    sys.exit(main())
