"""live_server's HTTP app against a state the test fills by hand: status codes, JSON errors, the
symbol filter, /health, /metrics, the dashboard files and the WebSocket feed (also over a real
socket, with a client that never reads)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from implementation.live_server.app import create_app
from implementation.live_server.feed import TRY_AGAIN_LATER, Broadcaster, connect_state
from implementation.state import LiveState
from opensqt.exchange import testdata
from tests.conftest import uvicorn_serving

pytestmark = [pytest.mark.timeout(30)]


class Served:
    def __init__(self, queue_size: int = 256) -> None:
        self.state = LiveState()
        self.broadcaster = Broadcaster(queue_size)
        connect_state(self.state, self.broadcaster)
        self.app = create_app(self.state, self.broadcaster)

    def fill(self) -> None:
        self.state.resync(testdata.spec_account(), testdata.spec_positions())


@contextlib.asynccontextmanager
async def client_for(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=served.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


# ---------------------------------------------------------------------- HTTP


@pytest.mark.asyncio
async def test_account_is_503_with_reason_until_data_arrives() -> None:
    served = Served()
    async with client_for(served) as client:
        response = await client.get("/api/account")
        assert response.status_code == 503, f"expected 503 without data, got {response.status_code}"
        body = response.json()
        assert body["error"] == "not ready" and "not connected" in body["detail"], f"got {body}"
        served.fill()
        response = await client.get("/api/account")
    assert response.status_code == 200, f"expected 200 with data, got {response.status_code}: {response.text}"
    account = response.json()
    assert account["total_balance"] == "10000.00" and account["unrealized_pnl"] == "-500.00", f"got {account}"
    assert account["updated_at"].endswith("Z"), f"expected an RFC 3339 time, got {account}"


@pytest.mark.asyncio
async def test_positions_all_and_filtered() -> None:
    served = Served()
    served.fill()
    async with client_for(served) as client:
        every = (await client.get("/api/positions")).json()["positions"]
        btc = (await client.get("/api/positions", params={"symbol": "BTCUSDT"})).json()["positions"]
        none = await client.get("/api/positions", params={"symbol": "XRPUSDT"})
    assert [p["symbol"] for p in every] == ["BTCUSDT", "ETHUSDT"], f"expected both positions, got {every}"
    assert [p["symbol"] for p in btc] == ["BTCUSDT"], f"expected only BTCUSDT, got {btc}"
    assert btc[0]["size"] == "0.5" and btc[0]["entry_price"] == "40000.00", (
        f"expected decimals as sent, got {btc}"
    )
    assert none.status_code == 200 and none.json() == {"positions": []}, f"got {none.status_code} {none.text}"


@pytest.mark.asyncio
@pytest.mark.parametrize("symbol", ["btcusdt", "BTC-USDT", "BTC USDT", "X" * 33])
async def test_bad_symbol_is_a_clear_422(symbol: str) -> None:
    served = Served()
    served.fill()
    async with client_for(served) as client:
        response = await client.get("/api/positions", params={"symbol": symbol})
    assert response.status_code == 422, f"expected 422 for symbol {symbol!r}, got {response.status_code}"
    body = response.json()
    assert "symbol" in body["error"] + body["detail"], f"expected the parameter named, got {body}"
    assert set(body) == {"error", "detail"}, f"expected an error and a detail, got {body}"


@pytest.mark.asyncio
async def test_unknown_path_and_wrong_method_are_json() -> None:
    async with client_for(Served()) as client:
        missing = await client.get("/api/orders")
        wrong = await client.post("/api/account")
        static_missing = await client.get("/static/nope.js")
    assert missing.status_code == 404, f"expected 404, got {missing.status_code}"
    assert missing.json() == {"error": "not found", "detail": "no such path: /api/orders"}, (
        f"got {missing.text}"
    )
    assert wrong.status_code == 405 and "POST" in wrong.json()["detail"], (
        f"got {wrong.status_code} {wrong.text}"
    )
    assert static_missing.status_code == 404 and static_missing.json()["error"] == "not found", (
        static_missing.text
    )


@pytest.mark.asyncio
async def test_health_needs_connection_and_data() -> None:
    served = Served()
    async with client_for(served) as client:
        first = await client.get("/health")
        served.state.mark_connected()
        connected_no_data = await client.get("/health")
        served.fill()
        ok = await client.get("/health")
        served.state.mark_disconnected(
            "connection to the exchange connector at 127.0.0.1:1 lost; reconnecting"
        )
        lost = await client.get("/health")
        stale = await client.get("/api/account")
    assert first.status_code == 503 and first.json()["status"] == "not ready", f"got {first.text}"
    assert "waiting for the first account" in connected_no_data.json()["reason"], connected_no_data.text
    assert ok.status_code == 200 and ok.json() == {"status": "ok"}, (
        f"expected ok, got {ok.status_code} {ok.text}"
    )
    assert lost.status_code == 503 and "lost" in lost.json()["reason"], f"got {lost.status_code} {lost.text}"
    # What was held may no longer be true: never served as current once the connector is lost.
    assert stale.status_code == 503 and stale.json()["error"] == "stale", (
        f"got {stale.status_code} {stale.text}"
    )
    assert float(stale.headers["X-Data-Age"]) >= 0, f"expected the data's age, got {dict(stale.headers)}"


@pytest.mark.asyncio
async def test_foreign_host_is_421_and_loopback_names_are_served() -> None:
    served = Served()
    served.fill()
    async with client_for(served) as client:
        foreign = await client.get("/api/account", headers={"Host": "evil.example:8080"})
        named = await client.get("/api/account", headers={"Host": "localhost:8080"})
        v6 = await client.get("/api/account", headers={"Host": "[::1]:8080"})
    assert foreign.status_code == 421 and "total_balance" not in foreign.text, f"got {foreign.text}"
    assert named.status_code == 200 and v6.status_code == 200, f"got {named.status_code}, {v6.status_code}"


@pytest.mark.asyncio
async def test_metrics_are_prometheus_text() -> None:
    served = Served()
    served.fill()
    served.state.apply_account(testdata.spec_account())
    async with client_for(served) as client:
        await client.get("/nope")
        response = await client.get("/metrics")
    text = response.text
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain"), text[
        :200
    ]
    for expected in (
        "live_server_ready 1.0",
        'live_server_updates_total{kind="account"} 1.0',
        "live_server_resyncs_total 1.0",
        'live_server_http_requests_total{method="GET",route="unmatched",status="404"} 1.0',
    ):
        assert expected in text, f"expected {expected!r} in /metrics, got:\n{text}"


@pytest.mark.asyncio
async def test_openapi_and_dashboard_are_served_locally() -> None:
    async with client_for(Served()) as client:
        schema = (await client.get("/openapi.json")).json()
        page = await client.get("/")
        script = await client.get("/static/dashboard.js")
        style = await client.get("/static/dashboard.css")
    for path in ("/api/account", "/api/positions", "/health", "/metrics"):
        assert path in schema["paths"], f"expected {path} in the OpenAPI schema, got {list(schema['paths'])}"
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], f"got {page.status_code}"
    assert "/static/dashboard.js" in page.text and "/static/dashboard.css" in page.text, (
        "expected local assets"
    )
    for text in (page.text, script.text, style.text):
        local = text.replace("http://www.w3.org/2000/svg", "")  # an XML namespace, not a download
        assert "http://" not in local and "https://" not in local, "expected no external URL in the dashboard"
    assert "connect-src 'self'" in page.headers["content-security-policy"], "expected a CSP keeping it local"
    assert script.status_code == 200 and "new WebSocket" in script.text, "expected the dashboard script"


# ---------------------------------------------------------------------- WebSocket over ASGI


class AsgiWebSocket:
    """A WebSocket client speaking ASGI directly to the app, in the test's own event loop.
    With reading=False it never takes what the server sends: every send blocks, like a
    browser tab that stopped reading with full TCP buffers."""

    def __init__(
        self, app: Any, *, reading: bool = True, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self._app = app
        self._reading = reading
        self._headers = headers or []
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed_with: int | None = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"", "headers": self._headers,
                 "scheme": "ws", "server": ("live.test", 80), "client": ("127.0.0.1", 1), "subprotocols": [],
                 "asgi": {"version": "3.0"}, "root_path": ""}  # fmt: skip
        await self._to_app.put({"type": "websocket.connect"})
        self.task = asyncio.ensure_future(self._app(scope, self._to_app.get, self._send))

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            self.closed_with = message.get("code", 1000)
            await self._to_app.put({"type": "websocket.disconnect", "code": self.closed_with})
            return
        if message["type"] == "websocket.send" and not self._reading:
            await asyncio.Event().wait()  # never returns: the client does not read
        if message["type"] == "websocket.send":
            await self.received.put(json.loads(message["text"]))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def close(self) -> None:
        await self._to_app.put({"type": "websocket.disconnect", "code": 1000})
        if self.task is not None:
            await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), 5.0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("origin", "served_feed"),
    [(b"http://evil.example", False), (b"null", False), (b"http://127.0.0.1:8080", True), (None, True)],
)
async def test_websocket_origin_check(origin: bytes | None, served_feed: bool) -> None:
    served = Served()
    served.fill()
    headers = [(b"host", b"127.0.0.1:8080")] + ([(b"origin", origin)] if origin is not None else [])
    client = AsgiWebSocket(served.app, headers=headers)
    await client.connect()
    try:
        if served_feed:
            first = await client.next()
            assert first["type"] == "snapshot", f"expected Origin {origin!r} served, got {first}"
        else:
            assert client.task is not None
            await asyncio.wait_for(asyncio.gather(client.task, return_exceptions=True), 5.0)
            assert client.closed_with == 1008 and client.received.empty(), (
                f"expected Origin {origin!r} refused before any data, got close {client.closed_with}"
            )
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_websocket_sends_snapshot_then_each_update() -> None:
    served = Served()
    served.fill()
    client = AsgiWebSocket(served.app)
    await client.connect()
    try:
        snapshot = await client.next()
        assert snapshot["type"] == "snapshot", f"expected a snapshot first, got {snapshot}"
        assert snapshot["data"]["account"]["equity"] == "9500.00", f"got {snapshot}"
        assert [p["symbol"] for p in snapshot["data"]["positions"]] == ["BTCUSDT", "ETHUSDT"], (
            f"got {snapshot}"
        )
        assert snapshot["data"]["status"]["ready"] is True, f"got {snapshot['data']['status']}"
        served.state.apply_account(testdata.spec_account(total_balance="123.45"))
        position = testdata.spec_positions()[1]
        position.mark_price = "2899.99"
        served.state.apply_position(position)
        served.state.mark_disconnected("connector gone")
        account, update, status = await client.next(), await client.next(), await client.next()
    finally:
        await client.close()
    assert account == {"type": "account", "data": {**account["data"], "total_balance": "123.45"}}, (
        f"got {account}"
    )
    assert update["type"] == "position" and update["data"]["mark_price"] == "2899.99", f"got {update}"
    assert status == {
        "type": "status",
        "data": {"connected": False, "ready": False, "reason": "connector gone"},
    }, f"got {status}"
    assert served.broadcaster.client_count == 0, (
        f"expected the client unsubscribed, got {served.broadcaster.client_count}"
    )


@pytest.mark.asyncio
async def test_websocket_client_that_never_reads_is_dropped_and_others_keep_up() -> None:
    served = Served(queue_size=8)
    served.fill()
    stuck = AsgiWebSocket(served.app, reading=False)
    healthy = AsgiWebSocket(served.app)
    await stuck.connect()
    await healthy.connect()
    try:
        await healthy.next()  # its snapshot
        for n in range(40):
            served.state.apply_account(testdata.spec_account(total_balance=f"{n}.00"))
            got = await healthy.next(timeout=2.0)
            assert got["data"]["total_balance"] == f"{n}.00", f"expected update {n} in order, got {got}"
        assert stuck.task is not None
        await asyncio.wait_for(asyncio.gather(stuck.task, return_exceptions=True), 5.0)
    finally:
        await healthy.close()
        await stuck.close()
    assert served.broadcaster.dropped_total == 1, (
        f"expected the stuck client dropped, got {served.broadcaster.dropped_total}"
    )


# ---------------------------------------------------------------------- WebSocket over a real socket


@contextlib.asynccontextmanager
async def real_server(served: Served) -> AsyncIterator[str]:
    options = {"ws": "websockets-sansio", "ws_per_message_deflate": False, "timeout_graceful_shutdown": 2}
    async with uvicorn_serving(served.app, **options) as port:
        yield f"ws://127.0.0.1:{port}/ws"


@pytest.mark.asyncio
async def test_real_socket_client_that_never_reads_does_not_stall_another() -> None:
    served = Served(queue_size=16)
    served.fill()
    padding = "x" * 16_000  # big messages fill the stuck client's socket buffers quickly
    async with real_server(served) as url:
        async with (
            websockets.connect(url, max_queue=1, max_size=None) as stuck,
            websockets.connect(url, max_size=None) as healthy,
        ):
            json.loads(await asyncio.wait_for(healthy.recv(), 5))  # snapshot
            received = 0
            for n in range(600):
                served.broadcaster.publish({"type": "test", "data": {"n": n, "pad": padding}})
                message = json.loads(await asyncio.wait_for(healthy.recv(), 5))
                assert message["data"]["n"] == n, f"expected message {n} in order, got {message['data']['n']}"
                received += 1
                if served.broadcaster.dropped_total:
                    break
            assert served.broadcaster.dropped_total == 1, (
                f"expected the never-reading client dropped, got {served.broadcaster.dropped_total} drops"
            )
            with contextlib.suppress(Exception):
                while True:  # drain what was buffered: the stuck socket was closed by the server
                    await asyncio.wait_for(stuck.recv(), 5)
            assert stuck.close_code == TRY_AGAIN_LATER, f"expected close code 1013, got {stuck.close_code}"
            served.broadcaster.publish({"type": "test", "data": {"n": -1}})
            after = json.loads(await asyncio.wait_for(healthy.recv(), 5))
            assert after["data"]["n"] == -1, f"expected the healthy client to go on, got {after}"
