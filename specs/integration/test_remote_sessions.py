"""§3.1/§4.1 the client library over sessions long enough to show what short ones hide: a second
and a third successful call (3.1.2.x2), 25 updates per stream and a quiet period read past the
last (4.1.1.x2), every update across a reconnect (4.1.1.x3).

Through the SUT's client driver (docs/client-driver.md) against the harness's mock exchange; rules
D20, D24, D30-D32, D35, D39, D40 of docs/sut-manifest.md. Sequences are compared with
specs.sequences, so a failure says which update was lost, duplicated, reordered or altered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.client_driver import DriverSession, Event, to_message
from harness.verdicts import Verdicts
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.client_steps import (
    DELIVERY_TIMEOUT_S,
    account,
    accounts,
    connected,
    position,
    positions,
    subscribed,
)
from specs.sequences import altered_fields, sequence_problem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.requires("client_library")]

UPDATES = 25  # per stream: a loss of every 10th, or of every 20th, shows
QUIET_S = 0.8  # read on this long after the last expected update: a trailing duplicate shows
STALLED_S = 2.0  # nothing new for this long: what came is all that will come
RECONNECT_WAIT_S = 5.0  # rule D35
CALL_DEADLINE_MS = 2000


def delivered(
    driver: DriverSession, stream: str, count: int, read: Callable[[list[Event], str], list[Any]]
) -> list[Any]:
    """The stream's updates once `count` came (or nothing new came for STALLED_S, or the delivery
    timeout passed), read on for QUIET_S more: everything the callback got, as messages."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    seen, changed = -1, time.monotonic()
    while (now := time.monotonic()) < deadline:
        got = len(driver.of(stream, "update"))
        if got >= count:
            break
        if got != seen:
            seen, changed = got, now
        elif got and now - changed > STALLED_S:
            break
        time.sleep(0.02)
    time.sleep(QUIET_S)
    return read(driver.of(stream, "update"), "an update")


# ---------------------------------------------------------------------------------------------- 3.1.2.x2


@pytest.mark.scenario("3.1.2.x2")
def test_repeated_calls_answer_the_server_as_it_is_then(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    connected(client_driver, mock_exchange, "3.1.2.x2")
    problems: list[str] = []
    for n in (1, 2, 3):
        now = account(40 + n)
        mock_exchange.set_account(now)
        answer = client_driver.call("get_account", 5.0, "D20", deadline_ms=CALL_DEADLINE_MS)
        client_driver.expect(answer, "result", "D20", f"to get_account call {n}")
        got: Any = to_message(answer.get("account"), pb.Account, f"get_account call {n}")
        if got != now:
            earlier = (
                " (the answer of an earlier call: a cached answer)"
                if n > 1 and got.total_balance < now.total_balance
                else ""
            )
            problems.append(
                f"get_account call {n}, after the server's account changed: "
                + "; ".join(altered_fields(now, got))
                + earlier
            )
    for n in (1, 2, 3):
        listed = [position("BTCUSDT", f"2.{n}0"), position("ETHUSDT", f"3{n}.5")]
        mock_exchange.set_positions(listed)
        answer = client_driver.call("get_positions", 5.0, "D24", symbol="", deadline_ms=CALL_DEADLINE_MS)
        client_driver.expect(answer, "result", "D24", f"to get_positions call {n}")
        got_positions = [
            to_message(p, pb.Position, f"get_positions call {n}") for p in answer.get("positions") or []
        ]
        problem = sequence_problem(listed, got_positions, noun="position")
        if problem is not None:
            problems.append(f"get_positions call {n}, after the server's positions changed: {problem}")
    assert not problems, "expected each call to answer the server's data as it is then; " + "; ".join(
        problems
    )


# ---------------------------------------------------------------------------------------------- 4.1.1.x2


@pytest.mark.scenario("4.1.1.x2")
def test_long_session_delivers_every_update_once_and_nothing_after_the_last(
    mock_exchange: MockExchangeServer, client_driver: DriverSession, verdicts: Verdicts
) -> None:
    connected(client_driver, mock_exchange, "4.1.1.x2")
    account_stream = subscribed(client_driver, mock_exchange, "4.1.1.x2", "D30")
    position_stream = subscribed(client_driver, mock_exchange, "4.1.1.x2", "D40", symbol="")
    sent_accounts = [account(n) for n in range(1, UPDATES + 1)]
    sent_positions = [position("BTCUSDT", f"1.{n:02d}") for n in range(1, UPDATES + 1)]
    for update, moved in zip(sent_accounts, sent_positions, strict=True):
        mock_exchange.trigger_account_update(update)
        mock_exchange.trigger_position_update(moved)
    got_accounts = delivered(client_driver, account_stream, UPDATES, accounts)
    got_positions = delivered(client_driver, position_stream, UPDATES, positions)
    with verdicts.check("4.1.1.x2"):
        problems = [
            f"{name}: {problem}"
            for name, problem in (
                ("the account stream", sequence_problem(sent_accounts, got_accounts)),
                ("the position stream", sequence_problem(sent_positions, got_positions)),
            )
            if problem is not None
        ]
        troubles = client_driver.of(account_stream, "stream_error") + client_driver.of(
            position_stream, "stream_error"
        )
        if troubles:
            problems.append(f"expected a healthy session (no stream_error), got {troubles[:2]}")
        assert not problems, (
            f"over {UPDATES} updates per stream and {QUIET_S:g} s after the last: " + "; ".join(problems)
        )


# ---------------------------------------------------------------------------------------------- 4.1.1.x3


@pytest.mark.scenario("4.1.1.x3")
@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL], ids=lambda c: c.name
)
def test_every_update_across_a_reconnect(
    mock_exchange: MockExchangeServer, client_driver: DriverSession, code: grpc.StatusCode
) -> None:
    connected(client_driver, mock_exchange, "4.1.1.x3")
    stream = subscribed(client_driver, mock_exchange, "4.1.1.x3", "D30")
    before = [account(n) for n in range(1, 6)]
    for update in before:
        mock_exchange.trigger_account_update(update)
    client_driver.wait_count(stream, "update", len(before), DELIVERY_TIMEOUT_S, "D30")
    mock_exchange.end_streams(code, "exchange hiccup")
    reconnected = client_driver.wait_for(
        lambda e: e.get("id") == stream and e["event"] == "reconnected",
        RECONNECT_WAIT_S,
        "the stream to resubscribe by itself after the error (a `reconnected` event)",
        "D35",
    )
    mock_exchange.wait_for_subscriptions("account", 1, timeout=DELIVERY_TIMEOUT_S)
    after = [account(n) for n in range(6, 11)]
    for update in after:
        mock_exchange.trigger_account_update(update)
    got = delivered(client_driver, stream, len(before) + len(after), accounts)
    problems = []
    problem = sequence_problem([*before, *after], got)
    if problem is not None:
        problems.append(f"across the {code.name} and the resubscription: {problem}")
    at = client_driver.index(reconnected)
    early = [e for e in client_driver.of(stream, "update") if client_driver.index(e) < at]
    if len(early) != len(before):
        problems.append(
            f"expected `reconnected` after the {len(before)} updates before the break and before any "
            f"update of the new subscription (rule D39), got it after {len(early)} updates"
        )
    reconnects = client_driver.of(stream, "reconnected")
    if len(reconnects) != 1:
        problems.append(f"expected one `reconnected` for the one break, got {len(reconnects)}")
    assert not problems, "; ".join(problems)
