"""§4.2.1 ExchangeServer SubscribeAccount (and what every call shares: errors, auth, TLS, churn).

Each test runs against the SUT's connector program (see conftest.py), fed by the harness's mock
exchange. The rules they check are numbered in docs/sut-manifest.md ("What every implementation
must do"); every failure message names its scenario and rule.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.fixtures import MetricRecorder
from harness.perf.growth import GrowthSeries, theil_sen_slope
from harness.sut import prometheus
from harness.sut.connector import ConnectorFactory
from harness.tls import TlsMaterial
from harness.verdicts import Verdicts
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.conftest import SERVER_TESTS, ConnectorUnderTest, read_stream
from specs.sequences import sequence_problem

pytestmark = [*SERVER_TESTS, pytest.mark.timeout(90)]
TOKEN = "conformance-token-4.2"
# A client whose transport buffers almost nothing: it really stops reading when the test stops.
SLOW_CLIENT_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
# Counts of concurrent work a connector's runtime may show (docs/sut-manifest.md, metrics the suite
# reads): each is judged where present, none is required.
CONCURRENCY_GAUGES = ("exchange_connector_tasks", "go_goroutines", "nodejs_active_handles")
SETTLE_GAP_S = 0.3
SETTLE_MAX_S = 3.0
COUNTED_WITHIN_S = 2.0  # a write is counted once it completes, which may be just after the client read it


def position(symbol: str, mark: str) -> pb.Position:
    """The spec's position of `symbol` at a new mark price."""
    moved = pb.Position()
    moved.CopyFrom(next(p for p in spec_positions() if p.symbol == symbol))
    moved.mark_price = mark
    return moved


def account(n: int) -> pb.Account:
    """A distinct, valid account per `n` (fixed timestamp, so equal messages compare equal)."""
    update = spec_account(total_balance=f"{10000 + n}.00")
    update.updated_at.FromSeconds(1_700_000_000 + n)
    return update


async def read(
    call: Any, count: int, scenario: str, timeout: float = 15.0, expected: list[Any] | None = None
) -> list[Any]:
    return await read_stream(call, count, scenario, timeout=timeout, expected=expected)


async def stream_end(
    call: Any, scenario: str, timeout: float = 15.0
) -> tuple[list[Any], grpc.aio.AioRpcError]:
    """The messages still delivered, and the error status that ends the stream."""
    messages: list[Any] = []

    async def drain() -> grpc.aio.AioRpcError:
        try:
            async for message in call:
                messages.append(message)
        except grpc.aio.AioRpcError as error:
            return error
        pytest.fail(f"expected the stream of {scenario} to end with an error status, it ended OK")

    try:
        return messages, await asyncio.wait_for(drain(), timeout)
    except asyncio.TimeoutError:
        pass  # fail outside the handler: the report's reason is then this message, not the timeout
    pytest.fail(
        f"expected the stream of {scenario} to end within {timeout} s, it stayed open ({len(messages)} messages read)"
    )


async def stream_refusal(call: Any, timeout: float = 2.0) -> grpc.aio.AioRpcError | str:
    """The error status a stream that should be refused ends with, or what came instead."""
    got: list[Any] = []

    async def drain() -> grpc.aio.AioRpcError | str:
        try:
            async for message in call:
                got.append(message)
        except grpc.aio.AioRpcError as error:
            return error
        return f"the stream ended OK ({len(got)} messages)"

    try:
        return await asyncio.wait_for(drain(), timeout)
    except asyncio.TimeoutError:
        call.cancel()
        return f"the stream stayed open for {timeout:g} s ({len(got)} messages): it was served"


async def health(connector: ConnectorUnderTest) -> int:
    reply = await health_pb2_grpc.HealthStub(connector.channel()).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


async def eventually_serving(connector: ConnectorUnderTest, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (status := await health(connector)) != health_pb2.HealthCheckResponse.SERVING:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"expected health SERVING again within {timeout} s, got {status}")
        await asyncio.sleep(0.1)


def subscribe(connector: ConnectorUnderTest, channel: grpc.aio.Channel | None = None) -> Any:
    return connector.stub(channel).SubscribeAccount(pb.SubscribeAccountRequest(), metadata=connector.metadata)


# ---------------------------------------------------------------------------------------------- a, b


@pytest.mark.scenario("4.2.1.a", "4.2.1.ac1")
async def test_single_client_receives_account_updates(connector: ConnectorUnderTest) -> None:
    call = subscribe(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.a")
    sent = [account(n) for n in range(5)]
    for update in sent:
        connector.mock.trigger_account_update(update)
    received = await read(call, 5, "4.2.1.a", expected=sent)
    problem = sequence_problem(sent, received)
    assert problem is None, (
        f"expected the 5 updates unchanged and in order (field values identical): {problem}"
    )
    call.cancel()
    await connector.wait_subscribers("account", 0, "4.2.1.a (the closed stream is cleaned up)")


@pytest.mark.scenario("4.2.1.b", "4.2.1.ac2")
async def test_ten_clients_receive_every_broadcast_over_one_upstream_subscription(
    connector: ConnectorUnderTest,
) -> None:
    calls = [subscribe(connector, connector.channel()) for _ in range(10)]
    await connector.wait_subscribers("account", 10, "4.2.1.b")
    # a labelled counter may show no sample before its first count: that reads as 0 (Prometheus)
    written_before = await connector.metric("messages_sent_total", {"topic": "account"}) or 0.0
    sent = [account(n) for n in range(20)]
    for update in sent:
        connector.mock.trigger_account_update(update)
    received = await asyncio.gather(*(read(call, 20, "4.2.1.b", expected=sent) for call in calls))
    for client, messages in enumerate(received):
        problem = sequence_problem(sent, messages)
        assert problem is None, f"under rule C4, client {client}: {problem}"
    mock = connector.mock
    upstream = (mock.connection_count, mock.subscriptions("account"), mock.subscriptions("positions"))
    assert upstream == (1, 1, 1), (
        f"under rule C2, expected ONE upstream connection and one subscription per topic with 10 subscribers, "
        f"got connections={upstream[0]}, account={upstream[1]}, positions={upstream[2]} (peers: {mock.peers})"
    )
    ever = (mock.total_subscriptions("account"), mock.total_subscriptions("positions"))
    assert ever == (1, 1), f"under rule C2, expected each upstream subscription opened once, got {ever}"
    # every write counted once (rule C4): 20 updates to 10 subscribers; the count may trail the reads
    deadline = time.monotonic() + COUNTED_WITHIN_S
    while (
        written := await connector.required_metric("messages_sent_total", {"topic": "account"})
    ) - written_before < 200:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert written - written_before == 200 and (written_before == 0 or not connector.fresh), (
        f'under rule C4, expected exchange_connector_messages_sent_total{{topic="account"}} to count the '
        f"200 updates written (20 to each of 10 subscribers), from {0 if connector.fresh else written_before:g}, "
        f"got {written:g} (from {written_before:g})"
    )


# ---------------------------------------------------------------------------------------------- c, x6


async def vanish_raw(address: str, opened: list[asyncio.StreamWriter]) -> None:
    """Open SubscribeAccount by hand on a bare TCP connection and leave it open in `opened`: the
    caller then resets the connection (no RST_STREAM, no GOAWAY: the client just disappears)."""
    host, port = address.rsplit(":", 1)

    def literal(name: str, value: str) -> bytes:  # HPACK literal header field, never indexed
        return b"\x10" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()

    headers = b"".join(
        literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/opensqt.exchange.v1.ExchangeService/SubscribeAccount"),
            (":authority", address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
        )

    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(4, 0, 0, b"")  # SETTINGS
        + frame(1, 0x4, 1, headers)  # HEADERS, END_HEADERS
        + frame(0, 0x1, 1, b"\x00\x00\x00\x00\x00")  # DATA: an empty request message, END_STREAM
    )
    opened.append(writer)
    await writer.drain()


def reset_raw(opened: list[asyncio.StreamWriter]) -> None:
    """Reset every hand-made connection (SO_LINGER 0: an RST, as when a host drops off)."""
    while opened:
        writer = opened.pop()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def churn(connector: ConnectorUnderTest, rounds: int, clients: int, scenario: str, steady: Any) -> None:
    """`rounds` times: `clients` subscribers connect, are seen by the server, and vanish (half reset
    their TCP connection, half drop their channel); the steady subscriber gets one update a round."""
    for number in range(rounds):
        channels = [connector.channel() for _ in range(clients // 2)]
        calls = [subscribe(connector, channel) for channel in channels]
        opened: list[asyncio.StreamWriter] = []
        try:  # this test's connections end with it, whatever happens: none is left to the next
            for _ in range(clients - len(channels)):
                await vanish_raw(connector.address, opened)
            await connector.wait_subscribers("account", 1 + clients, f"{scenario} round {number}")
        finally:
            reset_raw(opened)
            for channel in channels:
                await channel.close()
        del calls
        await connector.wait_subscribers("account", 1, f"{scenario} round {number}: vanished clients removed")
        # stamped as the exchange writes it: rounds are seconds apart, and a stamp that fell behind
        # the clock would read to the connector as an upstream lag (rule C30)
        update = account(number)
        update.updated_at.GetCurrentTime()
        connector.mock.trigger_account_update(update)
        got = await read(steady, 1, scenario)
        assert got == [update], f"the steady subscriber must keep receiving, got {got}"


async def resources(connector: ConnectorUnderTest) -> dict[str, float]:
    """What the program holds now, as every runtime shows it: its threads, open files and memory
    (psutil), and each count of concurrent work its metrics show (CONCURRENCY_GAUGES, where present)."""
    snapshot = connector.snapshot()
    sample = {"threads": float(snapshot.os_threads), "fds": float(snapshot.fds), "rss_mb": snapshot.rss_mb}
    text = await prometheus.scrape(connector.metrics_port)
    for name in CONCURRENCY_GAUGES:
        value = prometheus.sample_value(text, name)
        if value is not None:
            sample[name] = value
    return sample


async def settled(connector: ConnectorUnderTest) -> dict[str, float]:
    """resources() once two readings SETTLE_GAP_S apart agree on every count (threads finishing and
    sockets closing), or the last reading after SETTLE_MAX_S."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last = await resources(connector)
    while time.monotonic() < deadline:
        await asyncio.sleep(SETTLE_GAP_S)
        now = await resources(connector)
        if all(now[k] == last.get(k) for k in now if k != "rss_mb"):
            return now
        last = now
    return last


async def churn_rounds(
    connector: ConnectorUnderTest, rounds: int, clients: int, what: str, steady: Any
) -> GrowthSeries:
    """The program's resources before and after each of `rounds` rounds of churn."""
    growth = GrowthSeries()
    growth.add(await settled(connector))
    for _ in range(rounds):
        await churn(connector, 1, clients, what, steady)
        growth.add(await settled(connector))
    return growth


def assert_no_leak(growth: GrowthSeries, clients: int, metrics: MetricRecorder) -> None:
    for name, values in growth.series().items():
        metrics.record(f"churn_{name}_per_round", theil_sen_slope(values))
    leaks = growth.leaks(clients)
    assert not leaks, (
        "expected no growth that follows the churn of vanishing clients (a constant offset from lazy "
        "start-up is allowed), got: " + "; ".join(leaks)
    )


@pytest.mark.scenario("4.2.1.c", "4.2.1.ac3")
@pytest.mark.asyncio
async def test_abrupt_disconnects_are_logged_and_cleaned_up(
    connector: ConnectorUnderTest, verdicts: Verdicts, metrics: MetricRecorder
) -> None:
    steady = subscribe(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.c")
    await churn(connector, 1, 6, "4.2.1.c (warm-up)", steady)
    removed_before = len(connector.events("subscriber_removed"))
    growth = await churn_rounds(connector, 4, 6, "4.2.1.c", steady)
    with verdicts.check("4.2.1.c"):
        account_now = await connector.stub().GetAccount(
            pb.GetAccountRequest(), timeout=5, metadata=connector.metadata
        )
        assert account_now.total_balance, "expected the server to keep answering after the disconnects"
        removed = connector.events("subscriber_removed")[removed_before:]
        assert len(removed) == 24, f"expected 24 logged disconnects, got {len(removed)}: {removed[-3:]}"
    with verdicts.check("4.2.1.ac3"):
        assert_no_leak(growth, 6, metrics)


@pytest.mark.scenario("4.2.1.x6")
@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_hundred_clients_connecting_and_vanishing_leave_no_growth(
    connector: ConnectorUnderTest, metrics: MetricRecorder
) -> None:
    steady = subscribe(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.x6")
    await churn(connector, 2, 10, "4.2.1.x6 (warm-up)", steady)
    growth = await churn_rounds(connector, 10, 10, "4.2.1.x6", steady)
    assert_no_leak(growth, 10, metrics)


# ---------------------------------------------------------------------------------------------- d


@pytest.mark.scenario("4.2.1.d", "4.2.1.ac4")
async def test_exchange_errors_reach_clients_as_unavailable_then_service_recovers(
    connector: ConnectorUnderTest, verdicts: Verdicts
) -> None:
    """4.2.1.d judges the statuses and the recovery (rule C9); 4.2.1.ac4 that each error's message says
    the exchange failed (rule C9: "upstream" or "exchange" in the details), not any exact text."""
    mock = connector.mock
    call = subscribe(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.d")
    mock.fail_calls(grpc.StatusCode.UNAVAILABLE, "exchange under maintenance")
    mock.end_streams(grpc.StatusCode.UNAVAILABLE, "exchange under maintenance")

    _, ended = await stream_end(call, "4.2.1.d (the open stream, once the exchange failed)")
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await connector.stub().GetAccount(pb.GetAccountRequest(), timeout=10, metadata=connector.metadata)
    _, refused = await stream_end(subscribe(connector), "4.2.1.d (new subscription while down)")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(await health(connector))
    errors = {"the open stream": ended, "GetAccount": unary.value, "a new subscription": refused}
    with verdicts.check("4.2.1.d"):
        for what, error in errors.items():
            assert error.code() is grpc.StatusCode.UNAVAILABLE, (
                f"{what} while the exchange is down: expected UNAVAILABLE, got {error.code()}"
            )
        assert status == "NOT_SERVING", (
            f"expected health NOT_SERVING while the exchange is down, got {status}"
        )
    with verdicts.check("4.2.1.ac4"):
        for what, error in errors.items():
            details = error.details() or ""
            assert "upstream" in details.lower() or "exchange" in details.lower(), (
                f"{what}: expected the status message to say the upstream exchange failed, got {details!r}"
            )

    mock.fail_calls(None)
    with verdicts.check("4.2.1.d"):
        await eventually_serving(connector)
        await mock.wait_for_subscriptions_async("account", 1, timeout=10.0)
        again = subscribe(connector)
        await connector.wait_subscribers("account", 1, "4.2.1.d (after recovery)")
        mock.trigger_account_update(account(7))
        assert await read(again, 1, "4.2.1.d") == [account(7)], (
            "expected updates to flow again once the exchange is back"
        )


# ---------------------------------------------------------------------------------------------- x1 .. x5


@pytest.mark.scenario("4.2.1.x1")
async def test_slow_consumer_is_dropped_with_resource_exhausted_others_unaffected(
    connector: ConnectorUnderTest,
) -> None:
    fast = subscribe(connector)
    slow = subscribe(connector, connector.channel(options=SLOW_CLIENT_OPTIONS))  # never read until the end
    await connector.wait_subscribers("account", 2, "4.2.1.x1")
    total, window = 3000, 200
    sent = [account(n) for n in range(total)]
    received: list[pb.Account] = []
    for start in range(0, total, window):
        for update in sent[start : start + window]:
            connector.mock.trigger_account_update(update)
        received += await read(fast, window, "4.2.1.x1 (the reading subscriber)")
    assert received == sent, (
        f"under rule C13, expected the reading subscriber to get all {total} updates in order"
    )
    assert await connector.dropped("account") == 1, (
        f"under rule C13, expected 1 subscriber dropped, got {await connector.dropped('account')}"
    )
    delivered, ended = await stream_end(slow, "4.2.1.x1 (the slow subscriber)")
    assert ended.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (
        f"under rule C13, expected the slow subscriber's stream to end with RESOURCE_EXHAUSTED, got {ended.code()}"
    )
    assert delivered == sent[: len(delivered)] and len(delivered) < total, (
        f"under rule C13, expected an in-order prefix of the updates before the status (no silent gap), "
        f"got {len(delivered)} messages"
    )
    logged = connector.events("subscriber_dropped")
    assert len(logged) == 1 and logged[0]["level"] == "warning", (
        f"under rule C13, expected one drop logged, got {logged}"
    )
    await connector.wait_subscribers("account", 1, "4.2.1.x1 (the dropped subscriber is removed)")


REFUSAL_WAIT_S = 5.0  # a refused stream ends at once; an accepted one stays open (no update is sent)
INVALID_SYMBOLS = {
    "lower-case": "btcusdt",
    "punctuation": "BTC-USDT",
    "non-ascii": "BTCUSD€",
    "oversized-33": "A" * 33,
    "oversized-64k": "B" * 65536,
}


@pytest.mark.scenario("4.2.1.x2")
@pytest.mark.parametrize("symbol", INVALID_SYMBOLS.values(), ids=INVALID_SYMBOLS.keys())
async def test_invalid_symbols_are_rejected_with_invalid_argument(
    connector: ConnectorUnderTest, symbol: str
) -> None:
    stub = connector.stub()
    shown = symbol[:20]
    try:
        answered = await stub.GetPositions(
            pb.GetPositionsRequest(symbol=symbol), timeout=5, metadata=connector.metadata
        )
    except grpc.aio.AioRpcError as refused:
        unary = refused
    else:
        pytest.fail(
            f"GetPositions with the symbol {shown!r} ({len(symbol)} characters): expected INVALID_ARGUMENT, "
            f"got OK with {len(answered.positions)} positions"
        )
    call = stub.SubscribePositions(pb.SubscribePositionsRequest(symbol=symbol), metadata=connector.metadata)
    _, streamed = await stream_end(
        call, f"4.2.1.x2 (SubscribePositions with the symbol {shown!r})", timeout=REFUSAL_WAIT_S
    )
    for name, error in (("GetPositions", unary), ("SubscribePositions", streamed)):
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (
            f"{name} with the symbol {shown!r}: expected INVALID_ARGUMENT, got {error.code().name}"
        )
        assert shown in (error.details() or ""), (
            f"{name}: expected the message to name the symbol {shown!r}, got {error.details()!r}"
        )
    assert await connector.subscribers("positions") == 0, "a rejected subscription must not be held"


@pytest.mark.scenario("4.2.1.x2")
async def test_empty_symbol_and_unknown_fields_are_accepted(connector: ConnectorUnderTest) -> None:
    """Proto3 parsers keep unknown fields and ignore them, so a newer client's request that carries
    a field this contract does not know is served as if the field were absent (not rejected)."""
    everything = await connector.stub().GetPositions(
        pb.GetPositionsRequest(symbol=""), timeout=5, metadata=connector.metadata
    )
    assert len(everything.positions) == 2, f"an empty symbol means all, got {everything.positions}"
    unknown_field = b"\x98\x06\x01"  # field 99, varint 1
    request = pb.SubscribePositionsRequest(symbol="BTCUSDT").SerializeToString() + unknown_field
    call = connector.channel().unary_stream(
        "/opensqt.exchange.v1.ExchangeService/SubscribePositions",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.Position.FromString,
    )(request, metadata=connector.metadata)
    await connector.wait_subscribers("positions", 1, "4.2.1.x2 (request with an unknown field)")
    btc = position("BTCUSDT", "41500.00")
    connector.mock.trigger_position_update(position("ETHUSDT", "2950.00"))
    connector.mock.trigger_position_update(btc)
    assert await read(call, 1, "4.2.1.x2") == [btc], "the unknown field must not change the filter"
    raw_account = connector.channel().unary_unary(
        "/opensqt.exchange.v1.ExchangeService/GetAccount",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.Account.FromString,
    )
    answered = await raw_account(unknown_field, timeout=5, metadata=connector.metadata)
    assert answered.total_balance, "GetAccount with an unknown field must be served"


BAD_MARK = "4.15e+04"  # a position's money field as a float rendering (rule C12)


@pytest.mark.scenario("4.2.1.x3")
async def test_malformed_decimals_from_the_upstream_are_never_forwarded(
    connector: ConnectorUnderTest,
) -> None:
    call = subscribe(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.x3")
    positions = connector.stub().SubscribePositions(
        pb.SubscribePositionsRequest(symbol=""), metadata=connector.metadata
    )
    await connector.wait_subscribers("positions", 1, "4.2.1.x3")
    counted_before = await upstream_counts(connector)
    mock = connector.mock
    mock.trigger_account_update(account(1))
    for field, bad in (("equity", "1e-05"), ("total_balance", "NaN"), ("margin_used", "")):
        mock.trigger_account_update(spec_account(**{field: bad}))
    deadline = time.monotonic() + 10
    while not any(
        r.get("level") == "error" and "margin_used" in json.dumps(r) for r in connector.log_records()
    ):
        assert time.monotonic() < deadline, (
            "under rule C12, expected an error-level log line for the third malformed update "
            "(margin_used ''), got none within 10 s"
        )
        await asyncio.sleep(0.05)
    # the connector no longer trusts its view and asks the exchange, whose account is the last,
    # malformed one: GetAccount must fail, not forward it
    try:
        answered = await connector.stub().GetAccount(
            pb.GetAccountRequest(), timeout=5, metadata=connector.metadata
        )
        got = f"OK with total_balance {answered.total_balance!r}"
    except grpc.aio.AioRpcError as error:
        got = error.code().name
    assert got == "UNAVAILABLE", (
        f"under rule C12, expected GetAccount UNAVAILABLE after malformed account updates (an account "
        f"the connector cannot vouch for), got {got}"
    )
    # a malformed position of one symbol between two valid ones: only the valid ones come through
    sent_positions = [position("BTCUSDT", "41100.00"), position("BTCUSDT", "41200.00")]
    mock.trigger_position_update(sent_positions[0])
    mock.trigger_position_update(position("ETHUSDT", BAD_MARK))
    mock.trigger_position_update(sent_positions[1])
    mock.trigger_account_update(account(2))
    received = await read(call, 2, "4.2.1.x3")
    assert received == [account(1), account(2)], (
        f"expected only the two valid updates, got {[m.total_balance for m in received]}"
    )
    got_positions = await read(positions, 2, "4.2.1.x3 (positions)", expected=sent_positions)
    forwarded = [n for n, p in enumerate(got_positions, 1) if p.mark_price == BAD_MARK]
    assert not forwarded, (
        f"under rule C12, expected the ETHUSDT position with mark_price {BAD_MARK!r} never forwarded, "
        f"it came as position {forwarded[0]} of {len(got_positions)} read"
    )
    problem = sequence_problem(sent_positions, got_positions, noun="position")
    assert problem is None, (
        f"under rule C12, expected only the two valid positions (never the ETHUSDT one with mark_price "
        f"{BAD_MARK!r}): {problem}"
    )
    for value in ("1e-05", BAD_MARK):
        errors = [r for r in connector.log_records() if r.get("level") == "error" and value in json.dumps(r)]
        assert errors, f"expected an error-level log line naming the malformed value {value!r}, got none"
    positions.cancel()
    # read, malformed: 5 account updates (3 malformed), 3 positions (1 malformed)
    counted = await upstream_counts(connector)
    expected = {
        ("account", "read"): 5,
        ("account", "malformed"): 3,
        ("positions", "read"): 3,
        ("positions", "malformed"): 1,
    }
    if connector.fresh:  # a connector started for this test counts from 0
        wrong = {key: got for key, got in counted_before.items() if got != 0}
        assert not wrong, (
            f"under rule C12, expected the upstream counters to read 0 before any update, got {wrong}"
        )
    grown = {key: counted[key] - counted_before[key] for key in counted}
    wrong = [
        f"{topic} {what}: {grown[(topic, what)]:g}, expected {n}"
        for (topic, what), n in expected.items()
        if grown[(topic, what)] != n
    ]
    assert not wrong, (
        "under rule C12, exchange_connector_upstream_messages_total (read) and "
        "exchange_connector_upstream_invalid_messages_total (malformed) counted: " + "; ".join(wrong)
    )


async def upstream_counts(connector: ConnectorUnderTest) -> dict[tuple[str, str], float]:
    """The updates the connector counts as read from the exchange, and as malformed, by topic (rule C12)."""
    counts: dict[tuple[str, str], float] = {}
    for topic in ("account", "positions"):
        labels = {"topic": topic}
        counts[(topic, "read")] = await connector.metric("upstream_messages_total", labels) or 0.0
        counts[(topic, "malformed")] = (
            await connector.metric("upstream_invalid_messages_total", labels) or 0.0
        )
    return counts


@pytest.mark.scenario("4.2.1.x4")
@pytest.mark.requires("token_auth")
async def test_bearer_token_is_required_except_for_health(connectors: ConnectorFactory) -> None:
    """Rule C16: a call without the token, or with a wrong one, gets UNAUTHENTICATED with a message
    about the bearer token (its wording is the implementation's); health stays open; the right
    token is served. Every part is checked, and all problems are reported together."""
    connector = await connectors.start(token=TOKEN)
    stub = connector.stub()
    problems: list[str] = []
    for metadata, case in ((None, "no token"), ((("authorization", "Bearer wrong"),), "a wrong token")):
        unary: grpc.aio.AioRpcError | None = None
        try:
            await stub.GetAccount(pb.GetAccountRequest(), timeout=5, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            unary = error
        if unary is None:
            problems.append(
                f"GetAccount with {case}: expected UNAUTHENTICATED with a message about the bearer token, "
                "got OK (the account was served)"
            )
        streamed = await stream_refusal(
            stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=metadata)
        )
        if isinstance(streamed, str):
            problems.append(
                f"SubscribeAccount with {case}: expected UNAUTHENTICATED with a message about the bearer "
                f"token, got {streamed}"
            )
        for name, ended in (("GetAccount", unary), ("SubscribeAccount", streamed)):
            if not isinstance(ended, grpc.aio.AioRpcError):
                continue
            details = ended.details() or ""
            if ended.code() is not grpc.StatusCode.UNAUTHENTICATED or "token" not in details.lower():
                problems.append(
                    f"{name} with {case}: expected UNAUTHENTICATED with a message about the bearer token, "
                    f"got {ended.code()} {details!r}"
                )
    try:
        status = await health(connector)
        if status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(f"health checking without a token: expected SERVING, got {status}")
    except grpc.aio.AioRpcError as error:
        problems.append(
            f"health checking must stay open without a token: expected SERVING, got {error.code()} "
            f"{error.details()!r}"
        )
    try:
        answered = await stub.GetAccount(pb.GetAccountRequest(), timeout=5, metadata=connector.metadata)
        if not answered.total_balance:
            problems.append("GetAccount with the right token: expected the account, got an empty one")
        call = subscribe(connector)
        await connector.wait_subscribers("account", 1, "4.2.1.x4")
        connector.mock.trigger_account_update(account(4))
        if await read(call, 1, "4.2.1.x4") != [account(4)]:
            problems.append("a subscriber with the right token must get the update unchanged")
    except grpc.aio.AioRpcError as error:
        problems.append(f"a call with the right token failed: {error.code()} {error.details()!r}")
    assert not problems, "; ".join(problems)


@pytest.mark.scenario("4.2.1.x5")
@pytest.mark.requires("tls")
async def test_tls_connector_serves_tls_clients_only(
    connectors: ConnectorFactory, tls_material: TlsMaterial
) -> None:
    connector = await connectors.start(tls=tls_material)
    answered = await connector.stub().GetAccount(pb.GetAccountRequest(), timeout=5)
    assert answered.total_balance, "a TLS client trusting the CA must be served"
    call = subscribe(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.x5")
    connector.mock.trigger_account_update(account(5))
    assert await read(call, 1, "4.2.1.x5") == [account(5)], "a TLS subscriber must get updates"

    plaintext = connector.stub(connector.channel(plaintext=True))
    try:
        await plaintext.GetAccount(pb.GetAccountRequest(), timeout=5)
    except grpc.aio.AioRpcError as refused:
        assert refused.code() is grpc.StatusCode.UNAVAILABLE, (
            f"expected a plaintext client to fail with UNAVAILABLE, got {refused.code()}"
        )
    else:
        pytest.fail(
            "expected a plaintext client to fail with UNAVAILABLE, got OK (it was served in plaintext)"
        )
    wrong_ca = grpc.aio.secure_channel(connector.address, tls_material.channel_credentials(wrong_ca=True))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as untrusted:
            await connector.stub(wrong_ca).GetAccount(pb.GetAccountRequest(), timeout=5)
        assert untrusted.value.code() is grpc.StatusCode.UNAVAILABLE, (
            f"wrong CA: got {untrusted.value.code()}"
        )
    finally:
        await wrong_ca.close()
