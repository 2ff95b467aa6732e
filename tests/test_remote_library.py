"""RemoteExchange beyond the spec's scenarios: options (token, TLS files, reconnect policy), the
one-subscription iterators and the Exchange interface, and the StreamHandle's edge cases."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from harness.doubles.mock_exchange import MockExchangeServer
from implementation.adapters.interface import Exchange
from implementation.client_library.remote_exchange import (
    LOGGER_NAME,
    ReconnectPolicy,
    RemoteError,
    RemoteExchange,
    RemoteUnavailable,
)
from implementation.contract.errors import ExchangeUnavailable, InvalidData, InvalidRequest
from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc
from tests.conftest import UnimplementedExchange


@pytest_asyncio.fixture
async def mock_exchange(mock_exchange: MockExchangeServer) -> AsyncIterator[MockExchangeServer]:
    """The harness's mock exchange, given time after the test to see every stream closed, so that
    stopping it never races a client's cancellation."""
    yield mock_exchange
    deadline = time.monotonic() + 5.0
    while mock_exchange.subscriptions("account") + mock_exchange.subscriptions("positions"):
        if time.monotonic() > deadline:
            pytest.fail("expected the server to see every stream closed after the client was closed")
        await asyncio.sleep(0.01)


async def eventually(condition: Callable[[], bool], timeout: float, expectation: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{expectation} within {timeout} s")
        await asyncio.sleep(0.005)


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER_NAME and getattr(r, "event", None) == event]


# ---------------------------------------------------------------------------------------------- options


class TokenCheckingExchange(UnimplementedExchange):
    """Answers only calls carrying `authorization: Bearer <token>`; remembers what it saw."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.seen: list[str] = []

    def _check(self, context: Any) -> bool:
        metadata = dict(context.invocation_metadata())
        self.seen.append(str(metadata.get("authorization", "")))
        return bool(metadata.get("authorization") == f"Bearer {self.token}")

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        if not self._check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        return spec_account()

    async def SubscribeAccount(
        self, request: pb.SubscribeAccountRequest, context: Any
    ) -> AsyncIterator[pb.Account]:
        if not self._check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        yield spec_account()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_bearer_token_travels_with_unary_calls_and_streams() -> None:
    servicer = TokenCheckingExchange("s3cret")
    server = grpc.aio.server()
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with RemoteExchange(f"127.0.0.1:{port}", token="s3cret") as client:
            assert (await client.get_account()).equity == "9500.00"
            async for update in client.subscribe_account():
                assert update.equity == "9500.00"
                break
        async with RemoteExchange(f"127.0.0.1:{port}", token="wrong") as client:
            with pytest.raises(RemoteError) as raised:
                await client.get_account()
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED, (
            f"expected UNAUTHENTICATED, got {raised.value}"
        )
    finally:
        await server.stop(None)
    assert servicer.seen[:2] == ["Bearer s3cret", "Bearer s3cret"], (
        f"expected the token on both calls: {servicer.seen}"
    )


def test_tls_files_that_cannot_be_read_fail_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(ValueError, match=r"tls_ca file '.*nowhere/ca.pem' cannot be read"):
        RemoteExchange("127.0.0.1:50051", tls_ca=missing)


def test_client_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        RemoteExchange("127.0.0.1:50051", tls_cert=tmp_path / "client.pem")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be > 0"),
        ({"call_timeout": -1.0}, "call_timeout must be > 0"),
        ({"token": ""}, "token must be a non-empty single line"),
        ({"token": "a\nb"}, "token must be a non-empty single line"),
    ],
)
def test_bad_options_fail_at_once(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RemoteExchange("127.0.0.1:50051", **options)


def test_reconnect_policy_defaults_and_bounded_jittered_growth() -> None:
    policy = ReconnectPolicy()
    assert (
        policy.initial_backoff,
        policy.max_backoff,
        policy.multiplier,
        policy.jitter,
        policy.max_attempts,
    ) == (
        0.1,
        5.0,
        2.0,
        0.2,
        None,
    ), f"expected the documented defaults, got {policy}"
    rng = random.Random(7)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (50, 5.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays), (
            f"attempt {attempt}: expected {base} ± 20 %"
        )
        assert max(delays) - min(delays) > base * 0.2, (
            f"attempt {attempt}: expected jitter, got {set(delays)}"
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial_backoff": 0}, "initial_backoff must be > 0"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "max_backoff must be >= initial_backoff"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"jitter": 1.0}, r"jitter must be in \[0, 1\)"),
        ({"max_attempts": 0}, "max_attempts must be >= 1 or None"),
    ],
)
def test_reconnect_policy_refuses_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReconnectPolicy(**options)


def test_remote_exchange_implements_the_exchange_interface() -> None:
    assert isinstance(RemoteExchange("127.0.0.1:50051"), Exchange)


# ---------------------------------------------------------------------------------------------- calls


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_symbol_is_checked_before_any_call(mock_exchange: MockExchangeServer) -> None:
    async with RemoteExchange(mock_exchange.address) as client:
        with pytest.raises(InvalidRequest, match="btc-usdt"):
            await client.get_positions("btc-usdt")
        with pytest.raises(InvalidRequest):
            client.start_position_stream("no spaces")
        positions = await client.get_positions("ETHUSDT")
    assert [p.symbol for p in positions] == ["ETHUSDT"], f"expected the ETHUSDT position, got {positions}"
    assert mock_exchange.calls["GetPositions"] == 1, "expected the malformed symbol never sent"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_invalid_unary_answer_is_refused(mock_exchange: MockExchangeServer) -> None:
    mock_exchange.set_account(spec_account(margin_level="1e5"))
    async with RemoteExchange(mock_exchange.address) as client:
        with pytest.raises(InvalidData, match="margin_level has value '1e5'"):
            await client.get_account()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_closed_client_refuses_calls_and_closes_twice(mock_exchange: MockExchangeServer) -> None:
    client = RemoteExchange(mock_exchange.address)
    await client.connect()
    await client.close()
    await client.close()
    with pytest.raises(ExchangeUnavailable, match="is closed"):
        await client.get_account()


# ---------------------------------------------------------------------------------------------- one subscription


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_subscribe_account_raises_the_streams_error(mock_exchange: MockExchangeServer) -> None:
    received: list[pb.Account] = []
    async with RemoteExchange(mock_exchange.address) as client:

        async def read() -> None:
            async for update in client.subscribe_account():
                received.append(update)

        reader = asyncio.ensure_future(read())
        await mock_exchange.wait_for_subscriptions_async("account", 1)
        mock_exchange.trigger_account_update(spec_account(total_balance="1.00"))
        mock_exchange.end_streams(grpc.StatusCode.INTERNAL, "boom")
        with pytest.raises(RemoteError) as raised:
            await asyncio.wait_for(reader, 5.0)
    assert (raised.value.code, raised.value.details) == (grpc.StatusCode.INTERNAL, "boom")
    assert [u.total_balance for u in received] == ["1.00"]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_run_account_stream_follows_the_exchange_interface(
    mock_exchange: MockExchangeServer, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[pb.Account] = []
    async with RemoteExchange(mock_exchange.address) as client:
        runner = asyncio.ensure_future(client.run_account_stream(received.append))
        await mock_exchange.wait_for_subscriptions_async("account", 1)
        mock_exchange.trigger_account_update(spec_account(total_balance="1e5"))
        mock_exchange.trigger_account_update(spec_account(total_balance="2.00"))
        mock_exchange.end_streams(grpc.StatusCode.OK)
        with pytest.raises(RemoteUnavailable, match="ended the stream"):
            await asyncio.wait_for(runner, 5.0)

        positions: list[pb.Position] = []
        runner = asyncio.ensure_future(client.run_position_stream(positions.append))
        await mock_exchange.wait_for_subscriptions_async("positions", 1)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await eventually(
            lambda: mock_exchange.subscriptions("positions") == 0, 5.0, "expected the call cancelled"
        )
    assert [u.total_balance for u in received] == ["2.00"], "expected the invalid update skipped"
    assert logged(caplog, "invalid_message_skipped"), "expected the skipped update logged"


# ---------------------------------------------------------------------------------------------- StreamHandle


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_stream_gives_up_after_max_attempts(free_port: Callable[[], int]) -> None:
    policy = ReconnectPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=3)
    client = RemoteExchange(f"127.0.0.1:{free_port()}", reconnect=policy)
    try:
        handle = client.start_account_stream()
        with pytest.raises(RemoteUnavailable):
            async for _ in handle:
                pytest.fail("expected no update from an unreachable address")
    finally:
        await client.close()
    assert handle.done and isinstance(handle.error, RemoteUnavailable), (
        f"expected the final error, got {handle.error}"
    )
    assert handle.errors == 4, f"expected the first attempt and 3 retries to fail, got {handle.errors}"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_failing_callback_is_logged_and_the_stream_goes_on(
    mock_exchange: MockExchangeServer, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[str] = []

    def callback(update: pb.Account) -> None:
        if update.total_balance == "1.00":
            raise RuntimeError("the owner's bug")
        received.append(update.total_balance)

    async with RemoteExchange(mock_exchange.address) as client:
        async with client.start_account_stream(callback) as handle:
            await mock_exchange.wait_for_subscriptions_async("account", 1)
            for balance in ("1.00", "2.00"):
                mock_exchange.trigger_account_update(spec_account(total_balance=balance))
            await eventually(lambda: received == ["2.00"], 5.0, "expected the update after the failing one")
            with pytest.raises(TypeError, match="cannot also be iterated"):
                aiter(handle)
    failures = logged(caplog, "callback_failed")
    assert len(failures) == 1 and "the owner's bug" in str(getattr(failures[0], "reason", "")), failures
    assert handle.errors == 0, "expected a failing callback not to break the stream"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_cancel_from_inside_the_callback_stops_delivery(mock_exchange: MockExchangeServer) -> None:
    received: list[str] = []
    async with RemoteExchange(mock_exchange.address) as client:

        async def callback(update: pb.Account) -> None:
            received.append(update.total_balance)
            await handle.cancel()

        handle = client.start_account_stream(callback)
        await mock_exchange.wait_for_subscriptions_async("account", 1)
        for balance in ("1.00", "2.00", "3.00"):
            mock_exchange.trigger_account_update(spec_account(total_balance=balance))
        await eventually(lambda: handle.done, 5.0, "expected the stream to end after cancelling itself")
        await asyncio.sleep(0.1)
    assert received == ["1.00"], (
        f"expected no delivery after the callback cancelled the stream, got {received}"
    )
