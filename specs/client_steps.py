"""Steps shared by the client-library scenarios (§3.1, §4.1): they drive the SUT's client driver
(docs/client-driver.md) against the harness's mock exchange, and read the driver's events back as
contract messages."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.client_driver import DriverFailure, DriverSession, Event, to_message
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb

SUBSCRIBE_TIMEOUT_S = 10.0
DELIVERY_TIMEOUT_S = 10.0


def account(number: int) -> pb.Account:
    """A distinct, valid account: total_balance 10000.<number>."""
    return spec_account(total_balance=f"10000.{number:02d}")


def position(symbol: str, size: str) -> pb.Position:
    """The spec's position of `symbol` (or the first one, renamed) with this size."""
    template = {p.symbol: p for p in spec_positions()}.get(symbol, spec_positions()[0])
    changed = pb.Position()
    changed.CopyFrom(template)
    changed.symbol, changed.size = symbol, size
    return changed


def accounts(events: list[Event], where: str) -> list[pb.Account]:
    return [to_message(e.get("account"), pb.Account, where) for e in events]  # type: ignore[misc]


def positions(events: list[Event], where: str) -> list[pb.Position]:
    return [to_message(e.get("position"), pb.Position, where) for e in events]  # type: ignore[misc]


def connected(driver: DriverSession, mock: MockExchangeServer, scenario: str, **options: object) -> None:
    """connect to the mock exchange; fails naming rule D10 unless `connected` comes back."""
    outcome = driver.connect(mock.address, **options)  # type: ignore[arg-type]
    driver.expect(outcome, "connected", "D10", f"connecting to the mock exchange at {mock.address}")


def subscribed(
    driver: DriverSession, mock: MockExchangeServer, scenario: str, rule: str, symbol: str | None = None
) -> str:
    """subscribe_account (or subscribe_positions with `symbol`), until the driver says `subscribed` and the
    mock holds the stream; the stream's command id."""
    topic = "account" if symbol is None else "positions"
    before = mock.subscriptions(topic)
    if symbol is None:
        stream = driver.send("subscribe_account")
    else:
        stream = driver.send("subscribe_positions", symbol=symbol)
    outcome = driver.outcome(stream, SUBSCRIBE_TIMEOUT_S, rule, kinds=("subscribed", "error"))
    driver.expect(outcome, "subscribed", rule, f"to subscribe_{topic}")
    try:
        mock.wait_for_subscriptions(topic, before + 1, timeout=SUBSCRIBE_TIMEOUT_S)
    except TimeoutError as error:
        raise DriverFailure(f"the driver said subscribed (rule {rule}), but {error}") from None
    return stream


def connected_stream(
    driver: DriverSession, mock: MockExchangeServer, scenario: str, rule: str, symbol: str | None = None
) -> str:
    """connected(), then subscribed(): the stream's command id."""
    connected(driver, mock, scenario)
    return subscribed(driver, mock, scenario, rule, symbol)


def updates_after(driver: DriverSession, stream: str, event: Event) -> list[Event]:
    """The stream's updates printed after `event`."""
    at = driver.index(event)
    return [e for e in driver.of(stream, "update") if driver.index(e) > at]


@contextmanager
def silent_peer() -> Iterator[str]:
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word (no HTTP/2, no TLS)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, name="silent-peer", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2.0)
        for connection in held:
            connection.close()
        listener.close()


__all__ = [
    "DELIVERY_TIMEOUT_S",
    "account",
    "accounts",
    "connected",
    "position",
    "positions",
    "silent_peer",
    "subscribed",
    "updates_after",
]
