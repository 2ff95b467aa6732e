"""§3.1 the client library: construction (3.1.1) and GetAccount (3.1.2), through the SUT's client driver.

Unit level in the catalogue: one component, the client. The suite plays the server (the harness's
mock exchange, a silent TCP peer, a refused port) and reads what the library did from the driver's
events (docs/client-driver.md); rules D1-D24 of docs/sut-manifest.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.client_driver import DriverSession, Event, to_message
from harness.tls import TlsMaterial
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.client_steps import connected, silent_peer

pytestmark = [pytest.mark.unit, pytest.mark.requires("client_library"), pytest.mark.timeout(60)]
AT_ONCE_MS = 500.0  # an address the library can judge without network I/O is refused within this


# ---------------------------------------------------------------------------------------------- 3.1.1


@pytest.mark.scenario("3.1.1.a")
def test_client_with_valid_address_connects_and_is_usable(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    outcome = client_driver.connect(mock_exchange.address, connect_timeout_ms=5000)
    client_driver.expect(outcome, "connected", "D10", f"connecting to {mock_exchange.address}")
    assert outcome["took_ms"] < 5000, (
        f"expected connected well inside the 5 s connect timeout, got {outcome['took_ms']} ms"
    )
    answer = client_driver.call("get_account", 5.0, "D10", deadline_ms=2000)
    client_driver.expect(answer, "result", "D10", "from get_account right after connecting")
    got = to_message(answer.get("account"), pb.Account, "the account of get_account")
    assert isinstance(got, pb.Account) and got.total_balance == "10000.00", (
        f"expected the mock's account (total_balance 10000.00) at once, got {got}"
    )


MALFORMED = ["localhost", "host:notaport", "host:99999", "http://x", "::1:50051", "bad host:50051"]


def refused_at_once(driver: DriverSession, address: str, kind: str, rule: str, timeout: float) -> Event:
    """connect to `address` must fail with `kind` at once (no network I/O); the error event."""
    outcome = driver.connect(address, connect_timeout_ms=5000, timeout=timeout, rule=rule)
    driver.expect(outcome, "error", rule, f"for the address {address!r}")
    assert outcome.get("kind") == kind, (
        f"expected error kind {kind} for {address!r}, got {outcome.get('kind')!r} ({outcome.get('message')!r})"
    )
    assert outcome["took_ms"] < AT_ONCE_MS, (
        f"expected the error at once (no network I/O) for {address!r}, got it after {outcome['took_ms']} ms"
    )
    return outcome


@pytest.mark.scenario("3.1.1.b")
def test_client_with_malformed_address_fails_at_once(client_driver: DriverSession) -> None:
    for address in MALFORMED:
        outcome = refused_at_once(client_driver, address, "invalid_address", "D11", timeout=5.0)
        assert address.strip() in str(outcome.get("message")), (
            f"expected the error to name {address!r}, got {outcome.get('message')!r}"
        )


@pytest.mark.scenario("3.1.1.c")
def test_client_with_empty_address_fails_at_once(client_driver: DriverSession) -> None:
    for address in ("", "   "):
        refused_at_once(client_driver, address, "empty_address", "D12", timeout=7.0)


@pytest.mark.scenario("3.1.1.d")
@pytest.mark.requires("tls")
@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
def test_client_with_tls_ca_connects_to_tls_server(
    tls_material: TlsMaterial, mutual: bool, client_driver: DriverSession
) -> None:
    credentials = tls_material.server_credentials(require_client_auth=mutual)
    tls = {"ca": str(tls_material.ca_pem)}
    if mutual:
        tls |= {"cert": str(tls_material.client_cert_pem), "key": str(tls_material.client_key_pem)}
    with MockExchangeServer(credentials=credentials) as server:
        outcome = client_driver.connect(server.address, tls=tls, connect_timeout_ms=5000)
        client_driver.expect(outcome, "connected", "D13", f"over TLS to {server.address}")
        assert outcome.get("tls") is True, (
            f"under rule D13, expected `connected` to report a TLS channel, got tls={outcome.get('tls')!r}"
        )
        answer = client_driver.call("get_account", 5.0, "D13", deadline_ms=2000)
        client_driver.expect(answer, "result", "D13", "from get_account over TLS")
        client_driver.expect(client_driver.call("close", 5.0, "D13"), "closed", "D13", "to close")
    got = to_message(answer.get("account"), pb.Account, "the account of get_account")
    assert isinstance(got, pb.Account) and got.total_balance == "10000.00", (
        f"under rule D13, expected the account over TLS (total_balance 10000.00), got {got}"
    )


@pytest.mark.scenario("3.1.1.d")
@pytest.mark.requires("tls")
def test_client_with_wrong_tls_ca_fails_with_clear_error(
    tls_material: TlsMaterial, client_driver: DriverSession
) -> None:
    with MockExchangeServer(credentials=tls_material.server_credentials()) as server:
        outcome = client_driver.connect(
            server.address, tls={"ca": str(tls_material.wrong_ca_pem)}, connect_timeout_ms=1000, rule="D14"
        )
    client_driver.expect(outcome, "error", "D14", "when the CA did not sign the server's certificate")
    message = str(outcome.get("message"))
    assert outcome.get("kind") in ("tls", "connect_timeout"), (
        f"under rule D14, expected error kind tls or connect_timeout for an untrusted server certificate, "
        f"got {outcome.get('kind')!r} ({message!r})"
    )
    assert "certificate" in message.lower() or "tls" in message.lower(), (
        f"under rule D14, expected the error to say the certificate (or TLS) failed, got {message!r}"
    )


@pytest.mark.scenario("3.1.1.e")
@pytest.mark.parametrize("peer", ["refused", "silent"])
def test_client_for_unreachable_address_times_out(
    peer: str, free_port: Callable[[], int], metrics: Any, client_driver: DriverSession
) -> None:
    timeout_ms = 500.0

    def attempt(address: str) -> dict[str, Any]:
        outcome = client_driver.connect(address, connect_timeout_ms=timeout_ms, timeout=5.0, rule="D15")
        return client_driver.expect(outcome, "error", "D15", f"connecting to the {peer} peer {address}")

    if peer == "refused":
        address = f"127.0.0.1:{free_port()}"
        outcome = attempt(address)
    else:
        with silent_peer() as address:
            outcome = attempt(address)
    took_s = float(outcome["took_ms"]) / 1000.0
    overrun = took_s - timeout_ms / 1000.0
    metrics.record("connect_timeout_overrun_s", overrun, "s")
    message = str(outcome.get("message"))
    assert outcome.get("kind") == "connect_timeout", (
        f"expected error kind connect_timeout, got {outcome.get('kind')!r} ({message!r})"
    )
    assert address in message, f"expected the error to name {address}, got {message!r}"
    assert took_s >= timeout_ms / 1000.0 * 0.95, (
        f"expected to wait the full {timeout_ms:g} ms connect timeout, gave up after {outcome['took_ms']} ms"
    )
    assert overrun < 1.0, (
        f"expected to give up within 1 s after the {timeout_ms:g} ms timeout, took {outcome['took_ms']} ms"
    )


def errors_without_id(driver: DriverSession) -> list[Event]:
    return [e for e in driver.events if e["event"] == "error" and "id" not in e]


@pytest.mark.scenario("3.1.1.x1")
def test_driver_answers_bad_commands_and_keeps_running(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    closed = client_driver.call("close", 5.0, "D4")
    client_driver.expect(closed, "closed", "D4", "to close with no client open (not out of order)")
    early = client_driver.call("get_account", 5.0, "D4")
    client_driver.expect(early, "error", "D4", "for get_account before connect")
    unknown = client_driver.call("fly_to_the_moon", 5.0, "D4")
    client_driver.expect(unknown, "error", "D4", "for an unknown command")
    client_driver.send_raw("this is not json")
    client_driver.wait_for(
        lambda e: e["event"] == "error" and "id" not in e,
        5.0,
        "an error without id for a line that is not JSON",
        "D4",
    )
    # a command without an id is malformed: its error cannot name it either
    client_driver.send_raw('{"cmd": "get_account"}')
    client_driver.wait_for(
        lambda e: len(errors_without_id(client_driver)) >= 2,
        5.0,
        "a second error without id, for a command without an id",
        "D4",
    )
    nameless = errors_without_id(client_driver)[1]
    for outcome, doing in (
        (early, "a call before connect"),
        (unknown, "an unknown command"),
        (nameless, "a command without an id"),
    ):
        assert outcome.get("kind") == "bad_command", (
            f"under rule D4, expected error kind bad_command for {doing}, got {outcome.get('kind')!r}"
        )
    connected(client_driver, mock_exchange, "3.1.1.x1")
    answer = client_driver.call("get_account", 5.0, "D4", deadline_ms=2000)
    client_driver.expect(answer, "result", "D4", "from get_account after the bad commands")
    times = [float(e["t_ms"]) for e in client_driver.events]
    assert times == sorted(times), f"under rule D2, expected t_ms never to decrease, got {times}"


# ---------------------------------------------------------------------------------------------- 3.1.2


@pytest.mark.scenario("3.1.2.a")
def test_get_account_returns_the_servers_account(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    sent = spec_account(total_balance="12345.67", unrealized_pnl="-0.00000001", leverage="3")
    mock_exchange.set_account(sent)
    connected(client_driver, mock_exchange, "3.1.2.a")
    answer = client_driver.call("get_account", 5.0, "D20", deadline_ms=2000)
    client_driver.expect(answer, "result", "D20", "from get_account")
    names = {field.name for field in pb.Account.DESCRIPTOR.fields}
    keys = sorted(set(answer.get("account") or {}) - names)
    assert not keys, (
        f"under rule D6, expected the account in canonical proto3 JSON with the .proto's field names "
        f"{sorted(names)}, got the keys {keys}"
    )
    received = to_message(answer.get("account"), pb.Account, "the account of get_account")
    for field in pb.Account.DESCRIPTOR.fields:
        expected, got = getattr(sent, field.name), getattr(received, field.name)
        assert got == expected, f"field {field.name}: expected {expected!r}, got {got!r}"


@pytest.mark.scenario("3.1.2.b")
def test_get_account_surfaces_server_errors(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    connected(client_driver, mock_exchange, "3.1.2.b")
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAUTHENTICATED):
        details = f"upstream said no ({code.name.lower()})"
        mock_exchange.fail_calls(code, details)
        outcome = client_driver.call("get_account", 5.0, "D21", deadline_ms=2000)
        client_driver.expect(outcome, "error", "D21", f"when the server answers {code.name}")
        seen = (outcome.get("kind"), outcome.get("code"), outcome.get("details"))
        assert seen == ("rpc", code.name, details), (
            f"expected (kind, code, details) {('rpc', code.name, details)}, got {seen} "
            f"(message {outcome.get('message')!r})"
        )
    mock_exchange.fail_calls(None)


@pytest.mark.scenario("3.1.2.c")
def test_get_account_cancelled_cancels_the_rpc(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    connected(client_driver, mock_exchange, "3.1.2.c")
    mock_exchange.stall_calls()
    call = client_driver.send("get_account", deadline_ms=30000)
    assert mock_exchange.wait_until(lambda m: m.stalled_calls() >= 1, 5.0), (
        f"under rule D22, expected the GetAccount call to reach the server within 5 s; {client_driver.describe()}"
    )
    cancel = client_driver.send("cancel", target=call)
    ended = client_driver.outcome(call, 5.0, "D22")
    client_driver.expect(ended, "error", "D22", "as the cancelled call's outcome")
    assert (ended.get("kind"), ended.get("code")) == ("cancelled", "CANCELLED"), (
        f"under rule D22, expected the call to end with kind cancelled, code CANCELLED, got "
        f"{ended.get('kind')!r}, {ended.get('code')!r} ({ended.get('message')!r})"
    )
    done = client_driver.outcome(cancel, 5.0, "D22")
    client_driver.expect(done, "cancelled", "D22", "to the cancel command")
    assert mock_exchange.wait_until(lambda m: m.ended_stalls() >= 1, 2.0), (
        "under rule D22, expected the server to see the RPC cancelled within 2 s, it kept running"
    )
    mock_exchange.stall_calls(False)


@pytest.mark.scenario("3.1.2.d")
@pytest.mark.parametrize("where", ["per-call", "client-default"])
def test_get_account_timeout_is_deadline_exceeded(
    where: str, mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    deadline_ms = 300.0
    call_timeout_ms = deadline_ms if where == "client-default" else 10000.0
    connected(client_driver, mock_exchange, "3.1.2.d", call_timeout_ms=call_timeout_ms)
    mock_exchange.stall_calls()
    started = time.monotonic()
    outcome = client_driver.call(
        "get_account", 5.0, "D23", deadline_ms=deadline_ms if where == "per-call" else None
    )
    waited = time.monotonic() - started
    client_driver.expect(
        outcome, "error", "D23", f"from a call that outlives its {deadline_ms:g} ms deadline"
    )
    assert (outcome.get("kind"), outcome.get("code")) == ("rpc", "DEADLINE_EXCEEDED"), (
        f"expected kind rpc, code DEADLINE_EXCEEDED, got {outcome.get('kind')!r}, "
        f"{outcome.get('code')!r} ({outcome.get('message')!r})"
    )
    took = float(outcome["took_ms"])
    assert deadline_ms * 0.9 <= took < deadline_ms + 1000.0 and waited < deadline_ms / 1000.0 + 2.0, (
        f"expected to fail after ~{deadline_ms:g} ms, took {took} ms (seen after {waited:.2f} s)"
    )
    mock_exchange.stall_calls(False)


@pytest.mark.scenario("3.1.2.x1")
def test_get_positions_returns_the_servers_positions(
    mock_exchange: MockExchangeServer, client_driver: DriverSession
) -> None:
    sent = spec_positions()
    mock_exchange.set_positions(sent)
    connected(client_driver, mock_exchange, "3.1.2.x1")
    for symbol, expected in (("", sent), ("BTCUSDT", [p for p in sent if p.symbol == "BTCUSDT"])):
        answer = client_driver.call("get_positions", 5.0, "D24", symbol=symbol, deadline_ms=2000)
        client_driver.expect(answer, "result", "D24", f"from get_positions({symbol!r})")
        listed = answer.get("positions")
        got = [
            to_message(p, pb.Position, "a position of get_positions")
            for p in (listed if isinstance(listed, list) else [])
        ]
        assert got == expected, (
            f"expected get_positions({symbol!r}) to return {[p.symbol for p in expected]} "
            f"field for field, got {got}"
        )
