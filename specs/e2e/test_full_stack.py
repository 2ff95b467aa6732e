"""§5.1 full-stack test: the three programs of the SUT, the mock exchange upstream, one run.

One run per module (a fixture) goes through the spec's flow: start exchange_connector fed by the
harness's mock exchange, then market_maker and live_server pointed at it; trigger an account and
a position update in the mock exchange; read them back from market_maker's log, live_server's API
and its WebSocket feed; count the connections and subscriptions the mock exchange saw; SIGTERM the
clients, then the connector; compare this process's threads and fds with the baseline; time it all.
The run only observes; each acceptance criterion is its own test over those observations, so the
report says which one failed.

The run builds its own launcher and mock exchange (the harness's fixtures are per test, the run is
per module); the programs still come only from the SUT manifest.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

from harness.doubles.mock_exchange import MockExchangeServer
from harness.fixtures import MetricRecorder, show_logs_on_failure
from harness.perf.probes import ResourceSnapshot, assert_no_growth
from harness.ports import free_port
from harness.sut.launch import EventNotSeen, ProgramLauncher, ProgramNotReady, ProgramStopFailed
from harness.sut.manifest import Manifest
from specs.e2e.conftest import (
    CLIENTS,
    CONNECTOR,
    LIVE_SERVER,
    MARKET_MAKER,
    PROGRAMS,
    TOPICS,
    UPDATE_WAIT_S,
    Answer,
    FeedReader,
    Sent,
    Stack,
    account_update,
    carrying,
    http_get,
    json_objects,
    logged_update,
    make_stack,
    poll_http,
    position_update,
    program_error_lines,
)

READY, CONNECT, ACCOUNT, POSITION, SAME, ONE_CONNECTION, SHUTDOWN, NO_LEAKS, QUICK = (
    "5.1.1.a", "5.1.1.b", "5.1.1.c", "5.1.1.d", "5.1.1.e", "5.1.1.f", "5.1.1.g", "5.1.1.h", "5.1.1.i",
)  # fmt: skip
DURATION_LIMIT_S = 30.0
LEAK_SETTLE_S = 5.0
SHUTDOWN_ORDER = (MARKET_MAKER, LIVE_SERVER, CONNECTOR)  # clients first, as the spec does
KINDS = ("account", "position")
# ?symbol= (rule L1): the updated position's symbol, and the other one the mock exchange holds (§8.2)
FILTER_SYMBOLS = ("BTCUSDT", "ETHUSDT")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


@dataclass
class FullStackRun:
    """What one run of the flow saw; None / empty where the run did not get that far."""

    launcher: ProgramLauncher
    not_ready: dict[str, str] = field(default_factory=dict)  # program -> why it did not become ready
    ready_s: dict[str, float] = field(default_factory=dict)  # program -> seconds its start took
    ready_event: dict[str, Any] | None = None  # market_maker's "ready" line
    health: Answer | None = None  # live_server's GET /health once started
    upstream_open: dict[str, int] = field(default_factory=dict)  # topic -> streams open at the mock exchange
    upstream_error: str = ""
    sent: dict[str, Sent] = field(default_factory=dict)  # kind -> the update triggered
    logged: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # kind -> market_maker's record
    logged_miss: dict[str, str] = field(default_factory=dict)
    served: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # kind -> live_server API record
    served_last: dict[str, Answer] = field(default_factory=dict)
    filtered: dict[str, Answer] = field(default_factory=dict)  # symbol -> GET /api/positions?symbol=
    pushed: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # kind -> WebSocket record
    pushed_message: dict[str, Any] = field(default_factory=dict)  # kind -> the message carrying it
    feed: str = ""  # what the WebSocket client read, or why it could not
    subscriptions: dict[str, int] = field(default_factory=dict)
    total_subscriptions: dict[str, int] = field(default_factory=dict)
    active_peers: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    mock_violations: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    stop_failures: dict[str, str] = field(default_factory=dict)
    errors_logged: dict[str, list[str]] = field(default_factory=dict)
    leak: str | None = "not checked"  # None: back to baseline
    duration_s: float = 0.0

    @property
    def started(self) -> bool:
        return not self.not_ready and set(self.ready_s) == set(PROGRAMS)


@pytest.fixture(scope="module")
def full_stack(sut: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullStackRun]:
    began = time.monotonic()
    mock = MockExchangeServer().start()
    baseline = ResourceSnapshot.take()  # the mock exchange is the test's own, like the spec's
    launcher = ProgramLauncher(sut, tmp_path_factory.mktemp("full-stack"))
    run = FullStackRun(launcher)
    stack = make_stack(mock, launcher, free_port)
    try:
        with contextlib.ExitStack() as clients:
            _start(stack, run)
            if run.started:
                _check_connected(stack, run)
                feed = _open_feed(stack, run, clients) if sut.has_capability("websocket") else None
                for seed, kind in enumerate(KINDS, start=1):
                    _trigger_and_follow(stack, run, feed, kind, seed)
                if feed is not None:
                    run.feed = feed.summary()
                _count_connections(mock, run)
            _shut_down(stack, run)
        # every program stopped and every client of this process closed: back to the baseline?
        try:
            assert_no_growth(baseline, ResourceSnapshot.take(), settle_s=LEAK_SETTLE_S)
            run.leak = None
        except AssertionError as exc:
            run.leak = str(exc)
        run.duration_s = time.monotonic() - began
    finally:
        try:
            launcher.stop_all()
        finally:
            mock.stop()
    run.mock_violations = mock.violations
    yield run


@pytest.fixture(autouse=True)
def _program_logs_on_failure(full_stack: FullStackRun, request: pytest.FixtureRequest) -> None:
    """A failed criterion shows the programs' last log lines, as the harness launcher does per test."""
    show_logs_on_failure(request.node, full_stack.launcher)


def _start(stack: Stack, run: FullStackRun) -> None:
    for name in PROGRAMS:
        began = time.monotonic()
        try:
            stack.start(name)
        except ProgramNotReady as exc:
            run.not_ready[name] = str(exc)
            return
        run.ready_s[name] = time.monotonic() - began


def _check_connected(stack: Stack, run: FullStackRun) -> None:
    try:
        run.ready_event = stack.market_maker.wait_for_event("ready", timeout=UPDATE_WAIT_S)
    except EventNotSeen:
        run.ready_event = None
    _, run.health = poll_http(f"{stack.base_url}/health", lambda answer: answer.status == 200, UPDATE_WAIT_S)
    try:
        for topic in TOPICS:
            run.upstream_open[topic] = stack.mock.wait_for_subscriptions(topic, 1, timeout=UPDATE_WAIT_S)
    except TimeoutError as exc:
        run.upstream_error = str(exc)


def _open_feed(stack: Stack, run: FullStackRun, clients: contextlib.ExitStack) -> FeedReader | None:
    try:
        connection = clients.enter_context(ws_connect(stack.ws_url, open_timeout=5, close_timeout=2))
    except (OSError, TimeoutError, WebSocketException) as exc:
        run.feed = f"cannot open {stack.ws_url}: {type(exc).__name__}: {exc}"
        return None
    return FeedReader(connection)


def _trigger_and_follow(
    stack: Stack, run: FullStackRun, feed: FeedReader | None, kind: str, seed: int
) -> None:
    if kind == "account":
        account, sent = account_update(seed)
        stack.mock.trigger_account_update(account)
        event, path = "account_update", "/api/account"
    else:
        position, sent = position_update(seed)
        stack.mock.trigger_position_update(position)
        event, path = "position_update", "/api/positions"
    run.sent[kind] = sent
    run.logged[kind], run.logged_miss[kind] = logged_update(stack.market_maker, event, sent, UPDATE_WAIT_S)
    _, answer = poll_http(f"{stack.base_url}{path}", carrying(sent), UPDATE_WAIT_S)
    run.served[kind], run.served_last[kind] = sent.find(answer.json()), answer
    if kind == "position":
        with httpx.Client(trust_env=False) as client:
            for symbol in FILTER_SYMBOLS:
                run.filtered[symbol] = http_get(client, f"{stack.base_url}{path}?symbol={symbol}")
    if feed is not None:
        run.pushed[kind] = feed.find(sent, UPDATE_WAIT_S)
        run.pushed_message[kind] = feed.message_carrying(sent)


def _count_connections(mock: MockExchangeServer, run: FullStackRun) -> None:
    for topic in TOPICS:
        run.subscriptions[topic] = mock.subscriptions(topic)
        run.total_subscriptions[topic] = mock.total_subscriptions(topic)
    run.active_peers = mock.active_peers
    run.peers = mock.peers


def _shut_down(stack: Stack, run: FullStackRun) -> None:
    for name in SHUTDOWN_ORDER:
        program = stack.programs.get(name)
        if program is None:
            continue
        try:
            run.exit_codes[name] = program.stop()
        except ProgramStopFailed as exc:
            run.exit_codes[name] = program.returncode
            run.stop_failures[name] = str(exc)
        run.errors_logged[name] = program_error_lines(program)


def _require_started(run: FullStackRun, scenario: str) -> None:
    if not run.started:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in run.not_ready.items())
        pytest.fail(f"expected all three programs ready ({READY}), got: {reasons}")


# ------------------------------------------------------------------------------------------ the criteria


@pytest.mark.scenario(READY)
def test_all_three_programs_become_ready(full_stack: FullStackRun) -> None:
    for name in PROGRAMS:
        if name in full_stack.not_ready:
            pytest.fail(f"expected {name} to become ready, got: {full_stack.not_ready[name]}")
        if name not in full_stack.ready_s:
            pytest.fail(f"expected {name} to be started, got: not started (an earlier program failed)")


@pytest.mark.scenario(CONNECT)
def test_both_clients_subscribe_through_the_connector(full_stack: FullStackRun) -> None:
    _require_started(full_stack, CONNECT)
    assert full_stack.ready_event is not None, "expected market_maker to log a 'ready' event, got none"
    health = full_stack.health
    assert health is not None and health.status == 200, (
        f"expected live_server GET /health 200 once connected, got {health}"
    )
    assert not full_stack.upstream_error, f"{full_stack.upstream_error}"
    for topic in TOPICS:
        opened = full_stack.upstream_open.get(topic, 0)
        assert opened >= 1, (
            f"expected the connector subscribed to {topic!r} at the mock exchange, got {opened} streams"
        )


def _check_reached(run: FullStackRun, kind: str, scenario: str) -> None:
    _require_started(run, scenario)
    sent = run.sent.get(kind)
    assert sent is not None, f"expected a {kind} update triggered, got none (the run stopped early)"
    assert run.logged.get(kind) is not None, (
        f"expected market_maker to log the {sent.describe()}, got {run.logged_miss.get(kind)}"
    )
    path = "/api/account" if kind == "account" else "/api/positions"
    assert run.served.get(kind) is not None, (
        f"expected live_server GET {path} to serve the {sent.describe()} within "
        f"{UPDATE_WAIT_S:.0f} s, got {run.served_last.get(kind)}"
    )


@pytest.mark.scenario(ACCOUNT)
def test_account_update_reaches_both_clients(full_stack: FullStackRun) -> None:
    _check_reached(full_stack, "account", ACCOUNT)


@pytest.mark.scenario(POSITION)
def test_position_update_reaches_both_clients(full_stack: FullStackRun) -> None:
    _check_reached(full_stack, "position", POSITION)
    sent = full_stack.sent["position"]
    for symbol in FILTER_SYMBOLS:
        answer = full_stack.filtered.get(symbol)
        assert answer is not None and answer.status == 200, (
            f"expected live_server GET /api/positions?symbol={symbol} to answer 200, got {answer}"
        )
        others = sorted({str(r["symbol"]) for r in json_objects(answer.json()) if "symbol" in r} - {symbol})
        assert not others, (
            f"expected live_server GET /api/positions?symbol={symbol} to give only {symbol}'s "
            f"positions, got positions of {', '.join(others)}: {answer}"
        )
    mine = full_stack.filtered[sent.fields["symbol"]]
    assert sent.find(mine.json()) is not None, (
        f"expected live_server GET /api/positions?symbol={sent.fields['symbol']} to serve the "
        f"{sent.describe()}, got {mine}"
    )


def _check_same(run: FullStackRun, where: str, seen: dict[str, dict[str, Any] | None]) -> None:
    _require_started(run, SAME)
    for kind in KINDS:
        sent = run.sent.get(kind)
        assert sent is not None, f"expected a {kind} update triggered, got none (the run stopped early)"
        record = seen.get(kind)
        assert record is not None, f"expected {where} to hold the {sent.describe()}, got none"
        wrong = sent.differences(record)
        assert not wrong, (
            f"expected {where} to show exactly the {kind} values the exchange sent, got: " + "; ".join(wrong)
        )


@pytest.mark.scenario(SAME)
def test_both_clients_hold_exactly_the_values_sent(full_stack: FullStackRun) -> None:
    _check_same(full_stack, "market_maker's log", full_stack.logged)
    _check_same(full_stack, "live_server's API", full_stack.served)


@pytest.mark.scenario(SAME)
@pytest.mark.requires("websocket")
def test_websocket_feed_shows_exactly_the_values_sent(full_stack: FullStackRun) -> None:
    _require_started(full_stack, SAME)
    for kind in KINDS:
        sent = full_stack.sent.get(kind)
        assert sent is not None, f"expected a {kind} update triggered, got none (the run stopped early)"
        assert full_stack.pushed.get(kind) is not None, (
            f"expected live_server's WebSocket feed to push the {sent.describe()} within "
            f"{UPDATE_WAIT_S:.0f} s, got {full_stack.feed}"
        )
    _check_same(full_stack, "live_server's WebSocket feed", full_stack.pushed)
    for kind in KINDS:  # rule L4: each pushed as {"type": "account"|"position", "data": {...}}
        message = full_stack.pushed_message.get(kind)
        data = message.get("data") if isinstance(message, dict) else None
        assert (
            isinstance(message, dict)
            and message.get("type") == kind
            and isinstance(data, dict)
            and full_stack.sent[kind].carried_by(data)
        ), (
            f'expected live_server\'s WebSocket feed to push the {kind} update as {{"type": "{kind}", '
            f'"data": {{...}}}}, got {json.dumps(message)[:400]}'
        )


@pytest.mark.scenario(ONE_CONNECTION)
def test_mock_exchange_sees_one_connection_and_one_subscription_per_topic(full_stack: FullStackRun) -> None:
    _require_started(full_stack, ONE_CONNECTION)
    run = full_stack
    for topic in TOPICS:
        assert run.subscriptions[topic] == 1, (
            f"expected exactly ONE open {topic!r} subscription at the mock exchange "
            f"with {len(CLIENTS)} clients running, got {run.subscriptions[topic]}"
        )
        assert run.total_subscriptions[topic] == 1, (
            f"expected ONE {topic!r} subscription opened during the whole run, "
            f"got {run.total_subscriptions[topic]}"
        )
    assert len(run.active_peers) == 1, (
        f"expected the open streams to come from ONE connection, got {run.active_peers}"
    )
    assert len(run.peers) == 1, (
        f"expected ONE exchange connection during the run, got {len(run.peers)}: {run.peers}"
    )
    assert not run.mock_violations, (
        f"expected no protocol violation at the mock exchange, got {run.mock_violations}"
    )


@pytest.mark.scenario(SHUTDOWN)
def test_sigterm_ends_every_program_cleanly(full_stack: FullStackRun) -> None:
    _require_started(full_stack, SHUTDOWN)
    for name in SHUTDOWN_ORDER:
        assert name not in full_stack.stop_failures, f"{full_stack.stop_failures[name]}"
        code = full_stack.exit_codes.get(name)
        assert code == 0, f"expected {name} to exit with code 0 after SIGTERM, got {code}"
    for name in SHUTDOWN_ORDER:
        errors = full_stack.errors_logged.get(name, [])
        assert not errors, f"expected no error lines in {name}'s log, got {len(errors)}:\n" + "\n".join(
            line[:400] for line in errors[:10]
        )


@pytest.mark.scenario(NO_LEAKS)
def test_test_process_resources_back_to_baseline(full_stack: FullStackRun) -> None:
    _require_started(full_stack, NO_LEAKS)
    assert full_stack.leak is None, (
        f"expected this process's threads and fds back to the baseline within "
        f"{LEAK_SETTLE_S:.0f} s of the stop, got: {full_stack.leak}"
    )


@pytest.mark.scenario(QUICK)
def test_full_stack_flow_completes_in_under_30_s(full_stack: FullStackRun, metrics: MetricRecorder) -> None:
    _require_started(full_stack, QUICK)
    metrics.record("e2e_duration_s", full_stack.duration_s, "s")
    assert full_stack.duration_s < DURATION_LIMIT_S, (
        f"expected the full-stack flow (start, updates, shutdown, leak check) to take under "
        f"{DURATION_LIMIT_S:.0f} s, got {full_stack.duration_s:.1f} s (starts: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in full_stack.ready_s.items())
        + ")"
    )
