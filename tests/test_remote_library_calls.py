"""RemoteExchange, the Python client library, from the inside: connect, TLS, timeouts and GetAccount,
with what only a Python test can see (exception types and messages, leaks of tasks, threads and
fds in this process). The catalogue's §3.1 scenarios check the same behaviour through the client
driver, for any library (specs/unit/test_remote_client.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.tls import TlsMaterial
from implementation.client_library.remote_exchange import (
    ConnectTimeout,
    RemoteDeadlineExceeded,
    RemoteError,
    RemoteExchange,
)
from implementation.contract.errors import ExchangeUnavailable
from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc
from tests.conftest import UnimplementedExchange

pytestmark = [pytest.mark.timeout(60)]


# ---------------------------------------------------------------------------------------------- helpers


class StallingExchange(UnimplementedExchange):
    """GetAccount never answers by itself: it waits until the caller gives up (deadline or cancel)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable: the wait above never ends by itself")


class FixedExchange(UnimplementedExchange):
    """GetAccount answers the spec's §8.1 account."""

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        return spec_account()


@asynccontextmanager
async def serving(
    servicer: pb_grpc.ExchangeServiceServicer, credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[str]:
    """An ExchangeService on 127.0.0.1:<port 0> in this event loop; yields its address."""
    server = grpc.aio.server()
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@asynccontextmanager
async def silent_peer() -> AsyncIterator[str]:
    """A TCP listener that accepts connections and never says a word (no HTTP/2, no TLS)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------------------------- 3.1.1


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_client_with_valid_address_connects_and_is_usable(
    mock_exchange: MockExchangeServer, no_leaks: None
) -> None:
    started = time.monotonic()
    async with RemoteExchange(mock_exchange.address, connect_timeout=5.0) as client:
        connected_s = time.monotonic() - started
        account = await client.get_account()
    await client.close()  # closing again (after the context manager did) is harmless
    assert connected_s < 5.0, (
        f"3.1.1.a: expected connect() well inside its 5 s timeout, got {connected_s:.2f} s"
    )
    assert account.total_balance == "10000.00", (
        f"3.1.1.a: expected the mock's account (total_balance 10000.00) at once, got {account.total_balance!r}"
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("localhost", "port is missing"),
        ("host:notaport", "not a number"),
        ("host:99999", "out of range"),
        ("http://x", "scheme"),
        ("::1:50051", "brackets"),
        ("bad host:50051", "not a host name"),
    ],
)
def test_client_with_malformed_address_fails_at_once(address: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError) as raised:
        RemoteExchange(address)
    took = time.monotonic() - started
    message = str(raised.value)
    assert repr(address) in message, f"3.1.1.b: expected the error to name {address!r}, got {message!r}"
    assert reason in message, f"3.1.1.b: expected the error to say {reason!r}, got {message!r}"
    assert "host:port" in message, f"3.1.1.b: expected the error to show the expected form, got {message!r}"
    assert took < 0.5, f"3.1.1.b: expected the error at once (no network I/O), got it after {took:.2f} s"


@pytest.mark.parametrize("address", ["", "   "])
def test_client_with_empty_address_fails_at_once(address: str) -> None:
    with pytest.raises(ValueError) as raised:
        RemoteExchange(address)
    assert "exchange address is empty" in str(raised.value), (
        f"3.1.1.c: expected 'exchange address is empty', got {str(raised.value)!r}"
    )


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
async def test_client_with_tls_ca_connects_to_tls_server(
    tls_material: TlsMaterial, mutual: bool, no_leaks: None
) -> None:
    credentials = tls_material.server_credentials(require_client_auth=mutual)
    async with serving(FixedExchange(), credentials) as address:
        async with RemoteExchange(
            address,
            tls_ca=tls_material.ca_pem,
            tls_cert=tls_material.client_cert_pem if mutual else None,
            tls_key=tls_material.client_key_pem if mutual else None,
            connect_timeout=5.0,
        ) as client:
            account = await client.get_account()
    assert client.tls, "3.1.1.d: expected the client to report a TLS channel, got plaintext"
    assert account.total_balance == "10000.00", (
        f"3.1.1.d: expected the account over TLS (total_balance 10000.00), got {account.total_balance!r}"
    )


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_client_with_wrong_tls_ca_fails_with_clear_error(
    tls_material: TlsMaterial, no_leaks: None
) -> None:
    async with serving(FixedExchange(), tls_material.server_credentials()) as address:
        client = RemoteExchange(address, tls_ca=tls_material.wrong_ca_pem, connect_timeout=1.0)
        try:
            with pytest.raises(ConnectTimeout) as raised:
                await client.connect()
        finally:
            await client.close()
    message = str(raised.value)
    for part in ("TLS", address, str(tls_material.wrong_ca_pem), "certificate"):
        assert part in message, f"3.1.1.d: expected the wrong-CA error to mention {part!r}, got {message!r}"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("peer", ["refused", "silent"])
async def test_client_for_unreachable_address_times_out(
    peer: str, free_port: Callable[[], int], metrics: Any, no_leaks: None
) -> None:
    timeout = 0.5

    async def attempt(address: str) -> tuple[BaseException, float]:
        client = RemoteExchange(address, connect_timeout=timeout)
        started = time.monotonic()
        try:
            with pytest.raises(ConnectTimeout) as raised:
                await client.connect()
            return raised.value, time.monotonic() - started
        finally:
            await client.close()

    if peer == "refused":
        address = f"127.0.0.1:{free_port()}"
        error, took = await attempt(address)
    else:
        async with silent_peer() as address:
            error, took = await attempt(address)
    message = str(error)
    assert isinstance(error, ExchangeUnavailable), f"3.1.1.e: expected an ExchangeUnavailable, got {error!r}"
    assert address in message and "0.5 s" in message and "timeout" in message, (
        f"3.1.1.e: expected the error to name {address} and the 0.5 s connect timeout, got {message!r}"
    )
    overrun = took - timeout
    metrics.record("connect_timeout_overrun_s", overrun, "s")
    assert timeout <= took, (
        f"3.1.1.e: expected to wait the full {timeout} s connect timeout, gave up after {took:.2f} s"
    )
    assert overrun < 1.0, (
        f"3.1.1.e: expected to give up within 1 s after the {timeout} s timeout, took {took:.2f} s"
    )


# ---------------------------------------------------------------------------------------------- 3.1.2


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_get_account_returns_the_servers_account(
    mock_exchange: MockExchangeServer, no_leaks: None
) -> None:
    sent = spec_account(total_balance="12345.67", unrealized_pnl="-0.00000001", leverage="3")
    mock_exchange.set_account(sent)
    async with RemoteExchange(mock_exchange.address) as client:
        received = await client.get_account()
    assert isinstance(received, pb.Account), f"3.1.2.a: expected a pb.Account, got {type(received).__name__}"
    for field in pb.Account.DESCRIPTOR.fields:
        expected, got = getattr(sent, field.name), getattr(received, field.name)
        assert got == expected, f"3.1.2.a: field {field.name}: expected {expected!r}, got {got!r}"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAUTHENTICATED],
    ids=lambda code: code.name,
)
async def test_get_account_surfaces_server_error(
    mock_exchange: MockExchangeServer, code: grpc.StatusCode, no_leaks: None
) -> None:
    details = f"upstream said no ({code.name.lower()})"
    mock_exchange.fail_calls(code, details)
    async with RemoteExchange(mock_exchange.address) as client:
        with pytest.raises(RemoteError) as raised:
            await client.get_account()
    error = raised.value
    assert error.code == code, f"3.1.2.b: expected status {code.name}, got {error.code.name}"
    assert error.details == details, f"3.1.2.b: expected details {details!r}, got {error.details!r}"
    assert str(error) == f"GetAccount failed: {code.name}: {details}", f"3.1.2.b: unexpected message {error}"
    assert not isinstance(error, RemoteDeadlineExceeded), (
        "3.1.2.b: a server error must not look like a timeout"
    )
    if code == grpc.StatusCode.UNAVAILABLE:
        assert isinstance(error, ExchangeUnavailable), (
            "3.1.2.b: expected UNAVAILABLE to be ExchangeUnavailable"
        )


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_get_account_cancelled_cancels_the_rpc(no_leaks: None) -> None:
    servicer = StallingExchange()
    async with serving(servicer) as address, RemoteExchange(address) as client:
        call = asyncio.ensure_future(client.get_account(timeout=30.0))
        await asyncio.wait_for(servicer.entered.wait(), 5.0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        try:
            await asyncio.wait_for(servicer.cancelled.wait(), 2.0)
        except asyncio.TimeoutError:
            pytest.fail("3.1.2.c: expected the server to see the RPC cancelled within 2 s, it kept running")


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["per-call", "client-default"])
async def test_get_account_timeout_is_deadline_exceeded(where: str, no_leaks: None) -> None:
    timeout = 0.3
    servicer = StallingExchange()
    call_timeout = timeout if where == "client-default" else 10.0
    async with serving(servicer) as address, RemoteExchange(address, call_timeout=call_timeout) as client:
        started = time.monotonic()
        with pytest.raises(RemoteDeadlineExceeded) as raised:
            if where == "per-call":
                await client.get_account(timeout=timeout)
            else:
                await client.get_account()
        took = time.monotonic() - started
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, (
        f"3.1.2.d: expected DEADLINE_EXCEEDED, got {raised.value.code.name}"
    )
    assert timeout * 0.9 <= took < timeout + 1.0, (
        f"3.1.2.d: expected to fail after ~{timeout} s, took {took:.2f} s"
    )
