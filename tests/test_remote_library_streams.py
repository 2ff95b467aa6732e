"""RemoteExchange's streams from the inside: callbacks sync and async, `async for` consumption, log
levels read through caplog, cancellation by the owning task, and leak probes of this process. The
catalogue's §4.1 scenarios check the same behaviour through the client driver, for any library
(specs/integration/test_remote_streams.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from harness.doubles.mock_exchange import MockExchangeServer
from implementation.client_library.remote_exchange import (
    LOGGER_NAME,
    ReconnectPolicy,
    RemoteExchange,
    StreamHandle,
)
from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.client_steps import account, position

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

# Backoff short enough that a test sees several attempts, long enough to prove they are spaced.
QUICK_RETRY = ReconnectPolicy(initial_backoff=0.05, max_backoff=0.5)


# ---------------------------------------------------------------------------------------------- helpers


@pytest_asyncio.fixture
async def mock_exchange(mock_exchange: MockExchangeServer) -> AsyncIterator[MockExchangeServer]:
    """The harness's mock exchange (this wraps its fixture). After the test, every stream the client opened must be seen
    closed by the server (waiting for it also keeps the mock's stop from racing a cancellation)."""
    yield mock_exchange
    await eventually(
        lambda: mock_exchange.subscriptions("account") + mock_exchange.subscriptions("positions") == 0,
        5.0,
        "expected the server to see every stream closed after the client was closed",
    )


async def quiet(server: MockExchangeServer, timeout: float = 5.0) -> None:
    """Give the server up to `timeout` s to see the client's streams closed (never fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.subscriptions("account") + server.subscriptions("positions") == 0:
            return
        await asyncio.sleep(0.01)


async def eventually(condition: Callable[[], bool], timeout: float, expectation: str) -> float:
    """Wait until `condition()` holds; returns the seconds it took, fails naming `expectation`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{expectation} within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER_NAME and getattr(r, "event", None) == event]


# ---------------------------------------------------------------------------------------------- 4.1.1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("consumer", ["callback", "async-callback", "async-for"])
async def test_account_stream_delivers_five_updates_in_order(
    mock_exchange: MockExchangeServer, consumer: str, no_leaks: None
) -> None:
    sent = [account(n) for n in range(1, 6)]
    received: list[pb.Account] = []

    async def async_callback(update: pb.Account) -> None:
        await asyncio.sleep(0)
        received.append(update)

    callback = {"callback": received.append, "async-callback": async_callback, "async-for": None}[consumer]
    async with RemoteExchange(mock_exchange.address) as client:
        handle = client.start_account_stream(callback)
        reader = None
        if consumer == "async-for":

            async def read() -> None:
                async for update in handle:
                    received.append(update)

            reader = asyncio.ensure_future(read())
        await mock_exchange.wait_for_subscriptions_async("account", 1)
        assert await handle.wait_connected(5.0), "4.1.1.a: expected the stream to report it is connected"
        for update in sent:
            mock_exchange.trigger_account_update(update)
        await eventually(lambda: len(received) >= 5, 5.0, f"4.1.1.a: expected 5 updates, got {len(received)}")
        # one more, sent last: once it is in, nothing earlier can still be on its way (no duplicates)
        mock_exchange.trigger_account_update(account(99))
        await eventually(lambda: len(received) >= 6, 5.0, "4.1.1.ac2: expected the 6th (marker) update")
        await handle.cancel()
        if reader is not None:
            await asyncio.wait_for(reader, 1.0)  # iteration ends when the handle is cancelled
    balances = [u.total_balance for u in received]
    expected = [u.total_balance for u in sent] + ["10000.99"]
    assert balances == expected, (
        f"4.1.1.ac1/ac2: expected each update once, in order: {expected}, got {balances}"
    )
    assert all(isinstance(u, pb.Account) for u in received), "4.1.1.a: expected typed pb.Account updates"
    assert handle.done, "4.1.1.a: expected the stream's task to have exited after cancel()"
    assert handle.errors == 0 and handle.reconnects == 0, (
        f"4.1.1.ac2: expected a healthy stream (0 errors, 0 reconnects), got {handle.errors}, {handle.reconnects}"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("code", "level"),
    [
        (grpc.StatusCode.INTERNAL, logging.ERROR),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, logging.WARNING),
        (grpc.StatusCode.UNAVAILABLE, logging.WARNING),
    ],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else logging.getLevelName(value),
)
async def test_account_stream_server_error_is_logged_and_recovered(
    mock_exchange: MockExchangeServer,
    code: grpc.StatusCode,
    level: int,
    caplog: pytest.LogCaptureFixture,
    no_leaks: None,
) -> None:
    received: list[pb.Account] = []
    resyncs: list[pb.Account] = []
    async with RemoteExchange(mock_exchange.address, reconnect=QUICK_RETRY) as client:

        async def resync() -> None:
            resyncs.append(await client.get_account())

        async with client.start_account_stream(received.append, on_reconnect=resync) as handle:
            await mock_exchange.wait_for_subscriptions_async("account", 1)
            mock_exchange.trigger_account_update(account(1))
            mock_exchange.end_streams(code, "exchange exploded")
            await eventually(
                lambda: bool(events(caplog, "stream_broken")), 5.0, "4.1.1.b: expected the error logged"
            )
            await eventually(
                lambda: handle.reconnects == 1, 5.0, "4.1.1.ac3: expected the stream to resubscribe"
            )
            mock_exchange.trigger_account_update(account(2))
            await eventually(lambda: len(received) >= 2, 5.0, "4.1.1.ac3: expected an update after the error")
            assert (await client.get_account()).total_balance == "10000.02", "4.1.1.ac3: client unusable"
    record = events(caplog, "stream_broken")[0]
    logged = {"code": getattr(record, "code", None), "details": getattr(record, "details", None)}
    assert logged == {"code": code.name, "details": "exchange exploded"}, (
        f"4.1.1.b: expected the log to keep the status ({code.name}, 'exchange exploded'), got {logged}"
    )
    assert record.levelno == level, (
        f"4.1.1.b: expected level {logging.getLevelName(level)}, got {record.levelname}"
    )
    balances = [u.total_balance for u in received]
    assert balances == ["10000.01", "10000.02"], (
        f"4.1.1.b: expected only the two real updates, got {balances}"
    )
    assert len(resyncs) == 1, f"4.1.1.ac3: expected on_reconnect once (a resync), got {len(resyncs)} calls"


@pytest.mark.timeout(30)
async def test_account_stream_skips_invalid_messages(
    mock_exchange: MockExchangeServer, caplog: pytest.LogCaptureFixture, no_leaks: None
) -> None:
    received: list[pb.Account] = []
    invalid = [spec_account(total_balance="1e5"), spec_account(equity="NaN"), spec_account(leverage="")]
    async with RemoteExchange(mock_exchange.address) as client:
        async with client.start_account_stream(received.append) as handle:
            await mock_exchange.wait_for_subscriptions_async("account", 1)
            mock_exchange.trigger_account_update(account(1))
            for update in invalid:
                mock_exchange.trigger_account_update(update)
            mock_exchange.trigger_account_update(account(2))
            await eventually(lambda: len(received) >= 2, 5.0, "4.1.1.b: expected the two valid updates")
    balances = [u.total_balance for u in received]
    assert balances == ["10000.01", "10000.02"], f"4.1.1.b: expected only the valid updates, got {balances}"
    skipped = [str(getattr(r, "reason", "")) for r in events(caplog, "invalid_message_skipped")]
    assert len(skipped) == 3 and "'1e5'" in skipped[0], (
        f"4.1.1.b: expected 3 logged skips naming '1e5', got {skipped}"
    )
    assert handle.invalid == 3 and handle.errors == 0, (
        f"4.1.1.b: expected 3 invalid and 0 stream errors, got {handle.invalid} and {handle.errors}"
    )


@pytest.mark.exclusive  # a 1 s bound, as 4.1.1.c/ac4: alone, before the fault matrix starts
@pytest.mark.timeout(30)
@pytest.mark.parametrize("when", ["immediately", "while-streaming", "owning-task"])
async def test_account_stream_cancel_stops_within_one_second(
    mock_exchange: MockExchangeServer, when: str, metrics: Any, no_leaks: None
) -> None:
    calls: list[float] = []

    async def slow_callback(update: pb.Account) -> None:
        calls.append(time.monotonic())
        await asyncio.sleep(0.02)  # cancellation may well land inside the callback

    stop_feeding = threading.Event()

    def feed() -> None:  # a busy server: an update every 2 ms until told to stop
        number = 0
        while not stop_feeding.wait(0.002):
            number = (number + 1) % 100
            mock_exchange.trigger_account_update(account(number))

    feeder = threading.Thread(target=feed, name="account-feeder")
    async with RemoteExchange(mock_exchange.address) as client:
        try:
            if when == "owning-task":
                entered = asyncio.Event()
                handles: list[StreamHandle[pb.Account]] = []

                async def owner() -> None:
                    async with client.start_account_stream(slow_callback) as owned:
                        handles.append(owned)
                        entered.set()
                        await asyncio.Event().wait()

                owning = asyncio.ensure_future(owner())
                await entered.wait()
                handle = handles[0]
            else:
                handle = client.start_account_stream(slow_callback)
            if when != "immediately":
                await mock_exchange.wait_for_subscriptions_async("account", 1)
                feeder.start()
                await eventually(
                    lambda: len(calls) >= 5, 5.0, "4.1.1.c: expected updates flowing before cancel"
                )
            started = time.monotonic()
            if when == "owning-task":
                owning.cancel()
                await asyncio.gather(owning, return_exceptions=True)
            else:
                await handle.cancel()
            returned = time.monotonic()
            took = returned - started
            await asyncio.sleep(0.3)  # the server keeps sending meanwhile
            late = [t for t in calls if t > returned]
            await handle.cancel()  # a second cancel is harmless
        finally:
            stop_feeding.set()
            if feeder.is_alive():
                feeder.join(5.0)
        await eventually(
            lambda: mock_exchange.subscriptions("account") == 0, 5.0, "4.1.1.c: server still streaming"
        )
    metrics.record("stream_cancel_s", took, "s")
    print(f"4.1.1.c ({when}): cancel took {took * 1000:.1f} ms")
    assert took < 1.0, f"4.1.1.c/ac4: expected the stream stopped within 1 s, took {took:.3f} s"
    assert handle.done, "4.1.1.ac4: expected the stream's task finished when cancel returned"
    assert not late, f"4.1.1.c: expected no callback after cancellation returned, got {len(late)}"


@pytest.mark.timeout(60)
async def test_account_stream_reconnects_after_server_restart(
    free_port: Callable[[], int], metrics: Any, caplog: pytest.LogCaptureFixture, no_leaks: None
) -> None:
    port = free_port()
    first = MockExchangeServer(port=port).start()
    second: MockExchangeServer | None = None
    received: list[pb.Account] = []
    resynced: list[tuple[float, str]] = []
    try:
        async with RemoteExchange(first.address) as client:  # the default ReconnectPolicy

            async def resync() -> None:
                resynced.append((time.monotonic(), (await client.get_account()).total_balance))

            async with client.start_account_stream(received.append, on_reconnect=resync) as handle:
                await first.wait_for_subscriptions_async("account", 1)
                first.trigger_account_update(account(1))
                await eventually(
                    lambda: len(received) == 1, 5.0, "4.1.1.d: expected the update before the kill"
                )

                first.stop()  # ends its streams with UNAVAILABLE, then closes the port
                first.raise_violations()
                await eventually(
                    lambda: bool(events(caplog, "stream_broken")), 5.0, "4.1.1.d: expected break logged"
                )
                # let at least one reconnect attempt fail against the dead port
                await eventually(
                    lambda: handle.errors >= 2, 10.0, "4.1.1.d: expected a failed reconnect attempt"
                )
                assert not handle.connected, "4.1.1.d: expected the stream to report it is disconnected"

                second = MockExchangeServer(port=port)
                second.set_account(account(50))
                second.start()
                restarted = time.monotonic()
                number = 51
                while not any(int(u.total_balance.split(".")[1]) >= 51 for u in received):
                    if time.monotonic() - restarted > 20.0:
                        pytest.fail("4.1.1.d: expected new data within 20 s of the server restart, got none")
                    second.trigger_account_update(account(number))
                    number = min(number + 1, 99)
                    await asyncio.sleep(0.01)
                first_update_s = time.monotonic() - restarted
    finally:
        first.stop()
        if second is not None:
            await quiet(second)
            second.stop()
            second.raise_violations()
    metrics.record("reconnect_to_first_update_s", first_update_s, "s")
    print(f"4.1.1.d: server restart -> first new update: {first_update_s * 1000:.0f} ms")
    attempts = events(caplog, "stream_attempt_failed")
    assert attempts, "4.1.1.d: expected each failed reconnect attempt logged, found none"
    assert all(getattr(r, "backoff_s", 0) > 0 for r in attempts), (
        "4.1.1.d: expected each attempt to log its backoff"
    )
    assert handle.reconnects == 1, f"4.1.1.ac5: expected 1 reconnect, got {handle.reconnects}"
    assert len(resynced) == 1 and int(resynced[0][1].split(".")[1]) >= 50, (
        f"4.1.1.ac5: expected on_reconnect once, resyncing from the new server (10000.50 or later), got {resynced}"
    )
    assert resynced[0][0] - restarted < first_update_s, "4.1.1.ac5: expected on_reconnect before the new data"
    assert first_update_s < 7.0, (
        f"4.1.1.d: expected new data within one max backoff (5 s), got {first_update_s:.2f} s"
    )


# ---------------------------------------------------------------------------------------------- 4.1.2


async def collect_positions(
    mock_exchange: MockExchangeServer, symbol: str, sent: list[pb.Position], expected_count: int
) -> list[pb.Position]:
    received: list[pb.Position] = []
    async with RemoteExchange(mock_exchange.address) as client:
        async with client.start_position_stream(symbol, received.append):
            await mock_exchange.wait_for_subscriptions_async("positions", 1)
            for update in sent:
                mock_exchange.trigger_position_update(update)
            await eventually(
                lambda: len(received) >= expected_count,
                5.0,
                f"4.1.2: expected {expected_count} position updates for symbol {symbol!r}, got {len(received)}",
            )
    return received


@pytest.mark.timeout(30)
async def test_position_stream_delivers_updates_in_order(
    mock_exchange: MockExchangeServer, no_leaks: None
) -> None:
    sent = [position("BTCUSDT", size) for size in ("0.5", "0.6", "0.7", "0.8")]
    received = await collect_positions(mock_exchange, "", sent, len(sent))
    assert all(isinstance(p, pb.Position) for p in received), "4.1.2.ac1: expected typed pb.Position updates"
    got = [(p.symbol, p.size) for p in received]
    expected = [(p.symbol, p.size) for p in sent]
    assert got == expected, f"4.1.2.a: expected {expected} in order, got {got}"
    assert received[0] == sent[0], f"4.1.2.ac1: expected every field kept, got {received[0]} for {sent[0]}"


@pytest.mark.timeout(30)
async def test_position_stream_with_symbol_receives_only_that_symbol(
    mock_exchange: MockExchangeServer, no_leaks: None
) -> None:
    sizes = ("0.1", "0.2", "0.3", "0.4")
    sent = [position(symbol, size) for size in sizes for symbol in ("BTCUSDT", "ETHUSDT")]
    # the last BTCUSDT update comes after every ETHUSDT one: once it is in, none can still arrive
    received = await collect_positions(
        mock_exchange, "BTCUSDT", [*sent, position("BTCUSDT", "9.9")], len(sizes) + 1
    )
    got = [(p.symbol, p.size) for p in received]
    expected = [("BTCUSDT", size) for size in (*sizes, "9.9")]
    assert got == expected, f"4.1.2.b/ac2: expected only BTCUSDT, none lost, in order: {expected}, got {got}"


@pytest.mark.timeout(30)
async def test_position_stream_with_empty_symbol_receives_all(
    mock_exchange: MockExchangeServer, no_leaks: None
) -> None:
    sent = [
        position("BTCUSDT", "0.1"),
        position("ETHUSDT", "11.0"),
        position("SOLUSDT", "3.0"),
        position("ETHUSDT", "12.0"),
    ]
    received = await collect_positions(mock_exchange, "", sent, len(sent))
    got = [(p.symbol, p.size) for p in received]
    expected = [(p.symbol, p.size) for p in sent]
    assert got == expected, f"4.1.2.c/ac3: expected every symbol's update: {expected}, got {got}"
