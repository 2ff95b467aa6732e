"""4.1.1.x1: the SUT's client library interoperates with the SUT's own exchange_connector.

The §3.1/§4.1 scenarios play the server with the suite's mock exchange, and §4.2 plays the client
with the suite's grpcio client; this scenario joins the SUT's two halves as market_maker does: the
client driver's library connects to the connector (fed by the mock exchange), reads the account and
one symbol's positions, and both streams deliver what the test triggers at the exchange, unchanged
and in order. With a connector and a library from different gRPC stacks, this is the interop check
of the cross-stack matrix (tests/test_interop_matrix.py, docs/interop.md). Rule D44.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import Message

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.client_driver import DriverSession, to_message
from harness.sut.connector import ConnectorFactory
from harness.tls import TlsMaterial
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.sequences import altered_fields, sequence_problem

SCENARIO = "4.1.1.x1"
RULE = "D44"
TOKEN = "interop-token"
UPDATES = 3  # updates each stream must deliver once the first one arrived
DELIVERY_TIMEOUT_S = 10.0
# An update sent before the connector registered the stream reaches nobody, so updates go out
# slowly until the first one arrives, then briskly.
SLOW_INTERVAL_S = 0.3
BRISK_INTERVAL_S = 0.05

pytestmark = [pytest.mark.integration, pytest.mark.requires("client_library")]


def fail(expected: str, got: object) -> str:
    return f"expected {expected}, got {got}"


def account(number: int) -> pb.Account:
    return spec_account(total_balance=f"{10000 + number}.10", unrealized_pnl=f"-{number}.000001")


def position(symbol: str, number: int) -> pb.Position:
    template = {p.symbol: p for p in spec_positions()}.get(symbol, spec_positions()[0])
    changed = pb.Position()
    changed.CopyFrom(template)
    changed.symbol, changed.mark_price = symbol, f"{41000 + number}.25"
    return changed


def call(driver: DriverSession, cmd: str, doing: str, **fields: Any) -> dict[str, Any]:
    return driver.expect(driver.call(cmd, 15.0, RULE, **fields), "result", RULE, f"{doing}")


def subscribe(driver: DriverSession, cmd: str, **fields: Any) -> str:
    stream = driver.send(cmd, **fields)
    outcome = driver.outcome(stream, 15.0, RULE, kinds=("subscribed", "error"))
    driver.expect(outcome, "subscribed", RULE, f"to {cmd} on the connector")
    return stream


def stream_updates(
    driver: DriverSession, stream: str, field: str, send: Callable[[int], Message | None], what: str
) -> tuple[list[Message], list[Message]]:
    """Call send(0), send(1), ... until UPDATES more updates arrived after the first; (sent, received).
    send() returns the message the stream should deliver, or None for one it must not."""
    message_type: Any = pb.Account if field == "account" else pb.Position
    sent: list[Message] = []
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    number, next_at = 0, 0.0
    while True:
        received = [to_message(e.get(field), message_type, "an update") for e in driver.of(stream, "update")]
        if len(received) > UPDATES:
            break
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(
                fail(
                    f"the {what} stream to deliver the updates triggered at the exchange within "
                    f"{DELIVERY_TIMEOUT_S:g} s ({len(sent)} sent)",
                    f"{len(received)} received; {driver.describe()}",
                )
            )
        if now >= next_at:
            message = send(number)
            number += 1
            if message is not None:
                sent.append(message)
            next_at = now + (BRISK_INTERVAL_S if received else SLOW_INTERVAL_S)
        time.sleep(0.01)
    time.sleep(0.2)  # anything still on its way (a duplicate, a stray symbol) arrives meanwhile
    received = [to_message(e.get(field), message_type, "an update") for e in driver.of(stream, "update")]
    return sent, received


def assert_consecutive(sent: list[Message], received: list[Message], what: str) -> None:
    """Updates sent before the stream was registered reach nobody, so the run may start anywhere in
    what was sent; from its first update on nothing may be lost, added, changed or reordered."""
    start = sent.index(received[0]) if received[0] in sent else -1
    if start < 0:
        closest = min(sent, key=lambda message: len(altered_fields(message, received[0])))
        raise AssertionError(
            fail(
                f"the {what} stream to deliver the exchange's updates unchanged",
                f"its first update altered ({'; '.join(altered_fields(closest, received[0]))})",
            )
        )
    expected = sent[start : start + len(received)]
    if received != expected:
        raise AssertionError(
            fail(
                f"the {what} stream to deliver {len(received)} consecutive updates as sent, in order",
                f"{sequence_problem(expected, received)} (counted from the first update it delivered)",
            )
        )


@pytest.mark.scenario(SCENARIO)
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "transport",
    ["plaintext", pytest.param("tls+token", marks=pytest.mark.requires("tls", "token_auth"))],
)
def test_client_library_interoperates_with_the_connector(
    transport: str,
    mock_exchange: MockExchangeServer,
    sync_connectors: ConnectorFactory,
    client_driver: DriverSession,
    request: pytest.FixtureRequest,
) -> None:
    initial = account(0)
    held = [position("BTCUSDT", 0), position("ETHUSDT", 0)]
    mock_exchange.set_account(initial)
    mock_exchange.set_positions(held)
    tls: TlsMaterial | None = request.getfixturevalue("tls_material") if transport == "tls+token" else None
    connector = sync_connectors.start_sync(tls=tls, token=TOKEN if tls else None)

    outcome = client_driver.connect(
        connector.address,
        rule=RULE,
        tls={"ca": str(tls.ca_pem)} if tls else None,
        token=TOKEN if tls else None,
    )
    client_driver.expect(outcome, "connected", RULE, f"connecting to the connector ({transport})")

    got_account = to_message(
        call(client_driver, "get_account", "from get_account").get("account"),
        pb.Account,
        "the account of get_account",
    )
    assert got_account == initial, fail(
        f"get_account to return the exchange's account {initial}", got_account
    )
    listed = call(client_driver, "get_positions", "from get_positions", symbol="BTCUSDT").get("positions")
    got_positions = [to_message(p, pb.Position, "a position of get_positions") for p in listed or []]
    assert got_positions == held[:1], fail(
        "get_positions(BTCUSDT) to return only the BTCUSDT position", got_positions
    )

    accounts = subscribe(client_driver, "subscribe_account")

    def send_account(number: int) -> Message:
        update = account(number + 1)
        mock_exchange.trigger_account_update(update)
        return update

    sent, received = stream_updates(client_driver, accounts, "account", send_account, "account")
    assert_consecutive(sent, received, "account")

    btc = subscribe(client_driver, "subscribe_positions", symbol="BTCUSDT")

    def send_position(number: int) -> Message | None:
        # ETHUSDT and BTCUSDT alternate: every BTCUSDT update after the first follows an ETHUSDT one
        symbol = "ETHUSDT" if number % 2 == 0 else "BTCUSDT"
        update = position(symbol, number // 2 + 1)
        mock_exchange.trigger_position_update(update)
        return update if symbol == "BTCUSDT" else None

    sent_btc, received_btc = stream_updates(client_driver, btc, "position", send_position, "BTCUSDT position")
    others = sorted({p.symbol for p in received_btc if p.symbol != "BTCUSDT"})  # type: ignore[attr-defined]
    assert not others, fail("only BTCUSDT updates on the stream of symbol BTCUSDT", f"symbols {others} too")
    assert_consecutive(sent_btc, received_btc, "BTCUSDT position")
