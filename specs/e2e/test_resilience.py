"""§5.1 resilience: the clients outlive their connector, and wait for one that is not there yet.

- 5.1.1.x2: the connector is stopped mid-run and started again on the same port; market_maker and
  live_server, never restarted, go not-ready meanwhile and then serve data triggered after the
  restart.
- 5.1.1.x3: the clients start first, against a port where nothing listens; they keep running and
  say they are not ready (live_server's /health 503 with a reason, market_maker's log), and become
  ready once the connector starts.
"""

from __future__ import annotations

import time

import pytest

from harness.sut.launch import EventNotSeen, ProgramNotReady, RunningProgram
from specs.e2e.conftest import (
    CONNECTOR,
    LIVE_SERVER,
    MARKET_MAKER,
    Answer,
    Stack,
    account_update,
    carrying,
    logged_update,
    poll_http,
    position_update,
)

RESTART, CLIENTS_FIRST = "5.1.1.x2", "5.1.1.x3"
RECOVERY_WAIT_S = 20.0  # the clients' reconnect backoff is theirs to choose; this leaves it room
RETRYING_WINDOW_S = 3.0  # how long the clients are watched while no connector is there

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _health_503_with_reason(answer: Answer) -> bool:
    body = answer.json()
    reason = body.get("reason") if isinstance(body, dict) else None
    return answer.status == 503 and isinstance(reason, str) and bool(reason.strip())


def _assert_still_running(programs: list[RunningProgram], scenario: str, when: str) -> None:
    for program in programs:
        assert program.running, (
            f"expected {program.name} to keep running {when}, got {program.state}; {program.tail()}"
        )


def _assert_fresh_data_served(stack: Stack, scenario: str, seed: int, when: str) -> None:
    """Trigger an account and a position update now; both clients must show them."""
    account, sent_account = account_update(seed)
    stack.mock.trigger_account_update(account)
    position, sent_position = position_update(seed)
    stack.mock.trigger_position_update(position)
    for event, sent, path in (
        ("account_update", sent_account, "/api/account"),
        ("position_update", sent_position, "/api/positions"),
    ):
        record, miss = logged_update(stack.market_maker, event, sent, RECOVERY_WAIT_S)
        assert record is not None, f"expected market_maker to log the {sent.describe()} {when}, got {miss}"
        served, answer = poll_http(
            f"{stack.base_url}{path}",
            carrying(sent),
            RECOVERY_WAIT_S,
        )
        assert served, (
            f"expected live_server GET {path} to serve the {sent.describe()} {when} "
            f"within {RECOVERY_WAIT_S:.0f} s, got {answer}"
        )


def _assert_healthy_again(health: str, since: str) -> None:
    up, answer = poll_http(health, lambda answer: answer.status == 200, RECOVERY_WAIT_S)
    assert up, f"expected live_server GET /health 200 within {RECOVERY_WAIT_S:.0f} s of {since}, got {answer}"


@pytest.mark.scenario(RESTART)
def test_clients_recover_after_the_connector_restarts_on_the_same_port(stack: Stack) -> None:
    clients = [stack.market_maker, stack.live_server]
    pids = {program.name: program.pid for program in clients}
    health = f"{stack.base_url}/health"
    _assert_fresh_data_served(stack, RESTART, seed=10, when="before the restart")

    stack.connector.stop()
    down, answer = poll_http(health, lambda answer: answer.status == 503, RECOVERY_WAIT_S)
    assert down, (
        f"expected live_server GET /health 503 while the connector is down, got {answer} "
        f"for {RECOVERY_WAIT_S:.0f} s"
    )
    _assert_still_running(clients, RESTART, "while the connector is down")

    try:
        stack.start(CONNECTOR)  # same grpc_port and metrics_port as before
    except ProgramNotReady as exc:
        pytest.fail(f"expected the connector to start again on port {stack.grpc_port}, got: {exc}")
    _assert_healthy_again(health, "the connector's restart")
    _assert_fresh_data_served(stack, RESTART, seed=20, when="after the connector's restart")

    _assert_still_running(clients, RESTART, "through the connector's restart")
    now = {program.name: program.pid for program in clients}
    assert now == pids, f"expected the clients never restarted (pids {pids}), got pids {now}"


@pytest.mark.scenario(CLIENTS_FIRST)
def test_clients_started_before_the_connector_retry_and_then_become_ready(bare_stack: Stack) -> None:
    stack = bare_stack
    market_maker = stack.start(MARKET_MAKER, wait_ready=False)
    live_server = stack.start(LIVE_SERVER, wait_ready=False)
    clients = [market_maker, live_server]
    health = f"{stack.base_url}/health"

    answered, answer = poll_http(health, lambda answer: answer.status is not None, RECOVERY_WAIT_S)
    assert answered, f"expected live_server to answer GET /health with no connector, got {answer}"
    try:
        market_maker.wait_for_event("not_ready", timeout=RECOVERY_WAIT_S)
    except EventNotSeen as exc:
        pytest.fail(f"expected market_maker to log that it is not ready, got: {exc}")

    # Watch them for a while: always not ready (with a reason), never ready, never gone.
    deadline = time.monotonic() + RETRYING_WINDOW_S
    while time.monotonic() < deadline:
        _, answer = poll_http(health, lambda answer: True, 0)
        assert _health_503_with_reason(answer), (
            f"expected live_server GET /health 503 with a JSON reason while no connector "
            f"listens, got {answer}"
        )
        _assert_still_running(clients, CLIENTS_FIRST, "while no connector listens")
        time.sleep(0.2)
    ready_lines = market_maker.events("ready")
    assert not ready_lines, (
        f"expected market_maker not ready while no connector listens, got {ready_lines[0]}"
    )

    try:
        stack.start(CONNECTOR)
    except ProgramNotReady as exc:
        pytest.fail(f"expected the connector to start, got: {exc}")
    try:
        market_maker.wait_for_event("ready", timeout=RECOVERY_WAIT_S)
    except EventNotSeen as exc:
        pytest.fail(f"expected market_maker ready once the connector runs, got: {exc}")
    _assert_healthy_again(health, "the connector's start")
    _assert_fresh_data_served(stack, CLIENTS_FIRST, seed=30, when="once the connector runs")
    _assert_still_running(clients, CLIENTS_FIRST, "after the connector started")
