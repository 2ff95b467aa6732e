"""live_server's HTTP side: the JSON API, health, metrics, the WebSocket feed and the dashboard.

create_app() takes the state and the broadcaster it serves from, so a test can drive the app
with a state it fills by hand. Every error is JSON: {"error": <short>, "detail": <what was wrong>}.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from implementation.contract.errors import InvalidRequest
from implementation.contract.validation import MAX_SYMBOL_LENGTH, check_symbol
from implementation.live_server.access import AccessCheck, AccessPolicy
from implementation.live_server.feed import Broadcaster, serve_client
from implementation.live_server.metrics import LiveServerMetrics
from implementation.state import LiveState, message_fields

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The dashboard loads nothing from anywhere but this server.
DASHBOARD_CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class AccountOut(BaseModel):
    """The account as the exchange sent it: decimal strings, unchanged."""

    total_balance: str = Field(examples=["10000.00"])
    available_balance: str = Field(examples=["5000.00"])
    equity: str = Field(examples=["9500.00"])
    unrealized_pnl: str = Field(examples=["-500.00"])
    margin_used: str = Field(examples=["5000.00"])
    margin_level: str = Field(examples=["190.00"])
    leverage: str = Field(examples=["10.0"])
    updated_at: str = Field(description="RFC 3339 time the exchange produced this state")


class PositionOut(BaseModel):
    symbol: str = Field(examples=["BTCUSDT"])
    side: str = Field(examples=["LONG"])
    size: str = Field(examples=["0.5"])
    entry_price: str = Field(examples=["40000.00"])
    mark_price: str = Field(examples=["41000.00"])
    leverage: str = Field(examples=["10"])
    unrealized_pnl: str = Field(examples=["500.00"])
    liquidation: str = Field(examples=["36000.00"])
    margin_type: str = Field(examples=["ISOLATED"])


class PositionsOut(BaseModel):
    positions: list[PositionOut]


class HealthOut(BaseModel):
    status: str = Field(examples=["ok", "not ready"])
    reason: str | None = Field(default=None, examples=["exchange connector unreachable at 127.0.0.1:50051"])


class ErrorOut(BaseModel):
    error: str
    detail: str


def _error(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers or None)


def _not_ready(state: LiveState) -> JSONResponse:
    return _error(503, "not ready", state.not_ready_reason or "no data yet", **{"Retry-After": "1"})


def _unavailable(state: LiveState) -> JSONResponse | None:
    """503 when there is nothing to serve, or only data that may be stale (the connector is lost:
    what it sent last may no longer be true); None when the held data is current."""
    if not state.has_data:
        return _not_ready(state)
    if state.connected:
        return None
    response = _error(503, "stale", f"{state.not_ready_reason}; the last data held may be out of date")
    response.headers["Retry-After"] = "1"
    if state.account_received_at is not None:
        response.headers["X-Data-Age"] = f"{max(0.0, time.time() - state.account_received_at):.1f}"
    return response


def create_app(
    state: LiveState,
    broadcaster: Broadcaster,
    *,
    metrics: LiveServerMetrics | None = None,
    access: AccessPolicy | None = None,
    title: str = "live_server",
) -> FastAPI:
    metrics = metrics or LiveServerMetrics(state, broadcaster)
    app = FastAPI(
        title=title,
        version="1.0",
        description="Live view of one exchange account, fed by the exchange connector over gRPC. "
        "Money and sizes are decimal strings, exactly as the exchange sent them.",
        docs_url=None,  # Swagger UI would load from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.live = state
    app.state.broadcaster = broadcaster
    app.state.metrics = metrics
    _install_error_handlers(app)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    # Outermost: a refused Host or Origin reaches nothing else.
    app.add_middleware(AccessCheck, policy=access or AccessPolicy("127.0.0.1"))

    @app.get(
        "/api/account",
        response_model=AccountOut,
        responses={
            503: {"model": ErrorOut, "description": "no account data yet, or the connector is lost (stale)"}
        },
        summary="The latest account",
    )
    async def get_account() -> Response:
        if (refusal := _unavailable(state)) is not None or state.account is None:
            return refusal or _not_ready(state)
        return JSONResponse(message_fields(state.account))

    @app.get(
        "/api/positions",
        response_model=PositionsOut,
        responses={
            422: {"model": ErrorOut, "description": "bad symbol"},
            503: {"model": ErrorOut, "description": "no data yet, or the connector is lost (stale)"},
        },
        summary="The open positions, optionally of one symbol",
    )
    async def get_positions(
        symbol: str = Query(
            "",
            max_length=MAX_SYMBOL_LENGTH,
            description="Instrument name such as BTCUSDT (upper-case letters and digits); empty for all",
        ),
    ) -> Response:
        try:
            check_symbol(symbol)
        except InvalidRequest as exc:
            return _error(422, "invalid query parameter 'symbol'", str(exc))
        if (refusal := _unavailable(state)) is not None:
            return refusal
        return JSONResponse({"positions": [message_fields(p) for p in state.position_list(symbol)]})

    @app.get(
        "/health",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "not connected or no data yet"}},
        summary="200 only while connected to the connector and holding data",
    )
    async def health() -> Response:
        if state.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "not ready", "reason": state.not_ready_reason}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws")
    async def websocket_feed(websocket: WebSocket) -> None:
        """A snapshot first, then every change: {"type": "account"|"position"|"snapshot"|"status", "data": ...}."""
        await serve_client(websocket, state, broadcaster)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_CSP},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _error(404, "not found", f"no such path: {request.url.path}")
        if exc.status_code == 405:
            return _error(405, "method not allowed", f"{request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, "http error", str(exc.detail))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(422, "invalid request", "; ".join(_describe(error) for error in exc.errors()))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _describe(error: Any) -> str:
    where = [str(part) for part in error.get("loc", ())]
    place = (
        f"{where[0]} parameter '{'.'.join(where[1:])}'" if len(where) > 1 else ".".join(where) or "request"
    )
    value = error.get("input")
    shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "the value given"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{place}: {message[:1].lower()}{message[1:]} (got {shown})"


class _RequestMetrics:
    """Counts HTTP requests by route template (not raw path, so unknown paths cannot flood the labels)."""

    def __init__(self, app: ASGIApp, metrics: LiveServerMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, record_status)
        finally:
            route = "unmatched"
            for candidate in scope["app"].routes:
                if candidate.matches(scope)[0] == Match.FULL:
                    route = getattr(candidate, "path", "unmatched")
                    break
            self._metrics.http_requests.labels(scope["method"], route, str(status)).inc()
