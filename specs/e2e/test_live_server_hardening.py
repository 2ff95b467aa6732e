"""live_server against hostile clients and a lost connector (rules L20-L26 of docs/sut-manifest.md).

Each test starts the SUT's connector and live_server (the `live_stack` fixture) and plays one
client an operator would not want: unfinished requests held open (slowloris), more connections
than the documented limit, an oversized WebSocket message, a foreign web page (Origin), a DNS
rebinding attack (Host); then what the API says once the connector is gone, and how much the
program logs under a fast feed. Only the programs' HTTP side and logs are observed.
"""

from __future__ import annotations

import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from harness.fixtures import MetricRecorder
from specs.e2e.conftest import HTTP_TIMEOUT_S, Answer, Stack, account_update, carrying, poll_http
from specs.e2e.held_requests import held_requests

HEADER_TIMEOUT, CONNECTION_LIMIT, WS_MESSAGE_LIMIT, ORIGIN_CHECK, HOST_CHECK, STALE_API, LOG_VOLUME = (
    "5.1.1.x30", "5.1.1.x31", "5.1.1.x32", "5.1.1.x33", "5.1.1.x34", "5.1.1.x35", "5.1.1.x36",
)  # fmt: skip
HEADER_TIMEOUT_BOUND_S = 10.0  # rule L20
HELD_REQUESTS = 300
KEPT_ALIVE_HELD = 20  # L20: second requests on kept-alive connections, each with its own bound
TRICKLE_EVERY_S = 1.0  # a slowloris client sends a header line now and then to look alive
MAX_CONNECTIONS_BOUND = 1000  # rule L21: the documented limit is at most this
OVER_LIMIT = 50
LIMIT_LINE_EVERY_S = 10.0  # rule L21: at most one connection_limit line per 10 s
FAST_ANSWER_S = 2.0
WS_MESSAGE_BOUND = 1 << 20  # rule L22: the documented limit is at most 1 MiB
CLOSE_WAIT_S = 5.0
MESSAGE_TOO_BIG = 1009
FOREIGN = "evil.example"
STALE_WITHIN_S = 5.0  # rule L25
UPDATES, UPDATE_RATE = 300, 100.0  # rule L26: at 100 updates/s ...
LINES_PER_S, LINES_SLACK = 10.0, 10  # ... at most 10 lines/s (+10)

pytestmark = [pytest.mark.e2e]


# ------------------------------------------------------------------------------- unfinished requests


def quick_get(url: str, headers: dict[str, str] | None = None, timeout: float = FAST_ANSWER_S) -> Answer:
    with httpx.Client(trust_env=False) as client:
        try:
            response = client.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}")
    return Answer(response.status_code, response.text, response.headers.get("content-type", ""))


@pytest.mark.scenario(HEADER_TIMEOUT)
@pytest.mark.requires("http_hardening")
@pytest.mark.timeout(60)
def test_unfinished_requests_are_closed_within_the_bound(live_stack: Stack, metrics: MetricRecorder) -> None:
    with held_requests(live_stack.http_port, HELD_REQUESTS, KEPT_ALIVE_HELD) as held:
        normal = quick_get(f"{live_stack.base_url}/api/account", timeout=HTTP_TIMEOUT_S)
        assert normal.status == 200, (
            f"expected GET /api/account to answer 200 while "
            f"{HELD_REQUESTS + KEPT_ALIVE_HELD} unfinished requests are held, got {normal}"
        )
        deadline = held.opened_at + HEADER_TIMEOUT_BOUND_S
        next_trickle = time.monotonic() + TRICKLE_EVERY_S
        while held.open and time.monotonic() < deadline:
            held.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_trickle:
                held.trickle()
                next_trickle += TRICKLE_EVERY_S
        waited = time.monotonic() - held.opened_at
        metrics.record("unfinished_requests_closed_after_s", waited, "s")
        assert not held.open, (
            f"expected all {HELD_REQUESTS} unfinished requests on fresh connections and "
            f"{KEPT_ALIVE_HELD} unfinished second requests on kept-alive connections (a header line "
            f"every {TRICKLE_EVERY_S:.0f} s, never the end of the head) closed within "
            f"{HEADER_TIMEOUT_BOUND_S:.0f} s, got {len(held.open)} still open after {waited:.1f} s "
            f"({len(held.open & held.kept_alive)} of them kept-alive)"
        )


@pytest.mark.scenario(CONNECTION_LIMIT)
@pytest.mark.requires("http_hardening")
@pytest.mark.timeout(60)
def test_connections_past_the_limit_are_refused_fast_and_logged(live_stack: Stack) -> None:
    url = f"{live_stack.base_url}/api/account"
    count = MAX_CONNECTIONS_BOUND + OVER_LIMIT
    began = time.monotonic()
    with held_requests(live_stack.http_port, count) as held:
        started = time.monotonic()
        extra = quick_get(url)
        took = time.monotonic() - started
        settle = time.monotonic() + FAST_ANSWER_S
        while held.closed < OVER_LIMIT and time.monotonic() < settle:  # closes made room, maybe
            held.poll(0.05)
        refused = extra.status == 503 or extra.status is None
        assert (refused and took <= FAST_ANSWER_S) or held.closed >= OVER_LIMIT, (
            f"with {count} connections open (the limit is at most "
            f"{MAX_CONNECTIONS_BOUND}), expected a new request to get 503 or be closed within "
            f"{FAST_ANSWER_S:.0f} s, or the excess connections closed; got {extra} after {took:.1f} s "
            f"and {held.closed} of {count} closed"
        )
        seen = live_stack.live_server.events("connection_limit")
        deadline = time.monotonic() + CLOSE_WAIT_S
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)
            seen = live_stack.live_server.events("connection_limit")
        assert seen, (
            f"expected a 'connection_limit' log event once the limit "
            f"was reached, got none within {CLOSE_WAIT_S:.0f} s; {live_stack.live_server.tail()}"
        )
        levels = sorted({str(line.get("level", "")) for line in seen})
        assert all(level.lower() in ("warn", "warning") for level in levels), (
            f"expected the 'connection_limit' event at warning level, got level {', '.join(levels)}"
        )
    ok, last = poll_http(url, lambda answer: answer.status == 200, FAST_ANSWER_S)
    assert ok, (
        f"expected GET /api/account to answer 200 within "
        f"{FAST_ANSWER_S:.0f} s of the held connections closing, got {last}"
    )
    lines = live_stack.live_server.events("connection_limit")
    elapsed = time.monotonic() - began
    allowed = 1 + int(elapsed / LIMIT_LINE_EVERY_S)
    assert len(lines) <= allowed, (
        f"expected at most one 'connection_limit' line per {LIMIT_LINE_EVERY_S:.0f} s (an attack "
        f"must not flood the log), got {len(lines)} lines in {elapsed:.1f} s with {OVER_LIMIT} "
        f"connections over the limit"
    )


# ------------------------------------------------------------------------------------ the WebSocket


@pytest.mark.scenario(WS_MESSAGE_LIMIT)
@pytest.mark.requires("websocket", "http_hardening")
@pytest.mark.timeout(30)
def test_oversized_websocket_message_closes_with_1009(live_stack: Stack) -> None:
    with ws_connect(live_stack.ws_url, open_timeout=HTTP_TIMEOUT_S, max_size=None) as connection:
        connection.recv(timeout=HTTP_TIMEOUT_S)  # the snapshot: the feed is up
        connection.send("x" * (WS_MESSAGE_BOUND + 1))
        code: int | None = None
        deadline = time.monotonic() + CLOSE_WAIT_S
        try:
            while time.monotonic() < deadline:
                connection.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        except TimeoutError:
            pass
    assert code == MESSAGE_TOO_BIG, (
        f"expected a {WS_MESSAGE_BOUND + 1}-byte WebSocket message "
        f"to close the socket with code {MESSAGE_TOO_BIG} within {CLOSE_WAIT_S:.0f} s, got "
        + ("no close" if code is None else f"close code {code}")
    )


def _feed_answer(url: str, origin: str | None) -> str:
    """What a WebSocket client with `origin` (None: no Origin header) gets: "refused <why>",
    "closed" or "data"."""
    try:
        sent = Origin(origin) if origin is not None else None
        with ws_connect(url, origin=sent, open_timeout=HTTP_TIMEOUT_S) as connection:
            connection.recv(timeout=HTTP_TIMEOUT_S)
            return "data"
    except InvalidStatus as exc:
        return f"refused {exc.response.status_code}"
    except ConnectionClosed:
        return "closed"
    except TimeoutError:
        return "no data"


@pytest.mark.scenario(ORIGIN_CHECK)
@pytest.mark.requires("websocket", "http_hardening")
@pytest.mark.timeout(30)
def test_foreign_origin_cannot_open_the_feed(live_stack: Stack) -> None:
    foreign = _feed_answer(live_stack.ws_url, f"http://{FOREIGN}")
    assert foreign != "data", (
        f"expected /ws to refuse Origin http://{FOREIGN} (403, or a close "
        f"before any data), got the feed's data"
    )
    own = _feed_answer(live_stack.ws_url, live_stack.base_url)
    assert own == "data", f"expected /ws to serve its own page's Origin {live_stack.base_url}, got {own}"
    none = _feed_answer(live_stack.ws_url, None)
    assert none == "data", f"expected /ws to serve a client sending no Origin (not a browser), got {none}"


@pytest.mark.scenario(HOST_CHECK)
@pytest.mark.requires("http_hardening")
@pytest.mark.timeout(30)
def test_foreign_host_gets_no_balances(live_stack: Stack) -> None:
    url = f"{live_stack.base_url}/api/account"
    own = quick_get(url, timeout=HTTP_TIMEOUT_S)
    balance = (own.json() or {}).get("total_balance") if isinstance(own.json(), dict) else None
    foreign = quick_get(url, {"Host": f"{FOREIGN}:{live_stack.http_port}"}, timeout=HTTP_TIMEOUT_S)
    assert foreign.status in (400, 403, 421) and not (balance and str(balance) in foreign.text), (
        f"expected GET /api/account with Host {FOREIGN} to answer 400, 403 "
        f"or 421 without the balances, got {foreign}"
    )
    named = quick_get(url, {"Host": f"localhost:{live_stack.http_port}"}, timeout=HTTP_TIMEOUT_S)
    assert own.status == 200 and named.status == 200, (
        f"expected Host 127.0.0.1 and localhost to be served (200), got {own.status} and {named}"
    )


# --------------------------------------------------------------------------------- stale data, logs


@pytest.mark.scenario(STALE_API)
@pytest.mark.timeout(60)
def test_api_says_503_once_the_connector_is_gone(live_stack: Stack, metrics: MetricRecorder) -> None:
    account_url = f"{live_stack.base_url}/api/account"
    ok, answer = poll_http(account_url, lambda a: a.status == 200, HTTP_TIMEOUT_S)
    assert ok, f"expected /api/account to answer 200 at first, got {answer}"
    live_stack.connector.stop()
    stopped = time.monotonic()
    for path in ("/api/account", "/api/positions"):
        ok, answer = poll_http(f"{live_stack.base_url}{path}", lambda a: a.status == 503, STALE_WITHIN_S)
        assert ok, (
            f"expected GET {path} to answer 503 within {STALE_WITHIN_S:.0f} s "
            f"of the connector stopping, got {answer}"
        )
        body = answer.json()
        assert "json" in answer.content_type and isinstance(body, dict) and body, (
            f"expected GET {path}'s 503 to carry a JSON error object, got "
            f"{answer.content_type or 'no content type'!r}: {answer}"
        )
        if path == "/api/account":
            metrics.record("stale_api_503_after_s", time.monotonic() - stopped, "s")


@pytest.mark.scenario(LOG_VOLUME)
@pytest.mark.timeout(60)
def test_log_stays_small_under_a_fast_feed(live_stack: Stack, metrics: MetricRecorder) -> None:
    program = live_stack.live_server
    before = len(program.log_lines()) + len(program.output_lines())
    started = time.monotonic()
    sent = None
    for seed in range(UPDATES):
        account, sent = account_update(1000 + seed)
        live_stack.mock.trigger_account_update(account)
        time.sleep(max(0.0, started + (seed + 1) / UPDATE_RATE - time.monotonic()))
    assert sent is not None
    ok, answer = poll_http(f"{live_stack.base_url}/api/account", carrying(sent), HTTP_TIMEOUT_S)
    assert ok, f"expected the last update served by /api/account, got {answer}"
    took = time.monotonic() - started
    lines = len(program.log_lines()) + len(program.output_lines()) - before
    allowed = int(LINES_PER_S * took) + LINES_SLACK
    metrics.record("log_lines_per_s_at_100_updates_per_s", lines / took, "lines/s")
    assert lines <= allowed, (
        f"expected at most {allowed} log lines for {UPDATES} updates at "
        f"{UPDATE_RATE:.0f}/s ({LINES_PER_S:.0f} lines/s), got {lines} in {took:.1f} s"
    )
