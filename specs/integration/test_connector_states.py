"""§4.2 the connector's state at the edges: before its upstream is ready (4.2.1.x31), across an
upstream outage and recovery on every topic (4.2.1.x32), how it compares and parses a credential
(4.2.1.x33), and whether a unary answer follows the exchange's later changes (4.2.1.x34).

Each test runs against the SUT's connector program (harness.sut.connector), fed by the harness's
mock exchange; rules C8, C9, C11 and C16 of docs/sut-manifest.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.connector import ConnectorFactory, ConnectorUnderTest
from harness.verdicts import Verdicts
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.conftest import SERVER_TESTS, read_stream
from specs.sequences import altered_fields, sequence_problem

pytestmark = [*SERVER_TESTS, pytest.mark.timeout(60)]

TOKEN = "Conformance-Token-4.2.1.x33"  # mixed case: a case-blind comparison accepts its other cases
LISTEN_WITHIN_S = 10.0  # the started connector answers health within this, upstream or not
NOT_READY_HOLD_S = 1.5  # how long the connector is watched while its upstream does not answer yet
RECOVERY_S = 15.0  # rule C9: SERVING again within 15 s of the exchange's return
CALL_TIMEOUT_S = 5.0
FROZEN_CALL_DEADLINE_S = 1.0  # 4.2.1.x31 with a frozen upstream: the unary calls' deadline
REFUSAL_WITHIN_S = 2.0  # a refused stream ends at once; one accepted stays open (no update is sent)


def account(n: int) -> pb.Account:
    """A distinct, valid account per `n` (fixed timestamp, so equal messages compare equal)."""
    update = spec_account(total_balance=f"{20000 + n}.00", equity=f"{20100 + n}.50")
    update.updated_at.FromSeconds(1_710_000_000 + n)
    return update


def position(symbol: str, mark: str) -> pb.Position:
    moved = pb.Position()
    moved.CopyFrom(next(p for p in spec_positions() if p.symbol == symbol))
    moved.mark_price = mark
    return moved


def first_problem(expected: Any, got: Any, what: str) -> str | None:
    """None when equal; otherwise what differs, field by field."""
    if got == expected:
        return None
    return f"{what}: " + "; ".join(altered_fields(expected, got))


async def call_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError | None:
    """The error status a unary call ends with (None when it answered OK)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def stream_error(call: Any, timeout: float = CALL_TIMEOUT_S) -> str:
    """How a stream that should be refused ended: "CODE details", or what came instead."""
    got: list[Any] = []

    async def drain() -> str:
        try:  # read(), not iteration: the caller may have read this stream with read() before
            while (message := await call.read()) is not grpc.aio.EOF:
                got.append(message)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name} {error.details()!r}"
        return "the stream ended OK"

    try:
        return await asyncio.wait_for(drain(), timeout)
    except asyncio.TimeoutError:
        call.cancel()
        return f"the stream stayed open for {timeout:g} s ({len(got)} messages)"


# ---------------------------------------------------------------------------------------------- x31


class LateExchange:
    """A mock exchange that does not answer yet: its port not open (`closed`), or open on a frozen
    relay that passes no byte (`frozen`); answer() makes it answer."""

    def __init__(self, how: str, port: int) -> None:
        self.how = how
        self.server = MockExchangeServer(port=port, freezable=how == "frozen")
        if how == "frozen":
            self.server.start()
            self.server.freeze()

    def answer(self) -> None:
        if self.how == "frozen":
            self.server.thaw()
        else:
            self.server.start()


@pytest.fixture(params=["closed", "frozen"])
def late_exchange(request: pytest.FixtureRequest, free_port: Callable[[], int]) -> Iterator[LateExchange]:
    """The upstream of 4.2.1.x31, not answering yet (the test makes it answer)."""
    late = LateExchange(str(request.param), free_port())
    try:
        yield late
    finally:
        late.server.stop()
        late.server.raise_violations()


@pytest.mark.scenario("4.2.1.x31")
async def test_not_serving_and_refusing_until_the_upstream_is_ready(
    late_exchange: LateExchange, connectors: ConnectorFactory, verdicts: Verdicts
) -> None:
    """Rule C11: started while its upstream does not answer yet (its port closed, or a frozen
    process behind it), the connector listens, reads
    NOT_SERVING and refuses ExchangeService calls with UNAVAILABLE; once the upstream answers, it
    reads SERVING within 15 s and serves."""
    connector = await connectors.start(upstream=late_exchange.server, subscriptions=(), wait_ready=False)
    listening = time.monotonic()
    while (status := await connector.health()).startswith("error"):
        if time.monotonic() - listening > LISTEN_WITHIN_S:
            pytest.fail(
                f"expected the connector to answer health (NOT_SERVING) within {LISTEN_WITHIN_S:g} s of its "
                f"start while its upstream does not answer yet, got {status}; {connector.tail()}"
            )
        await asyncio.sleep(0.1)
    stub = connector.stub()
    seen: list[str] = []
    watched = time.monotonic()
    while time.monotonic() - watched < NOT_READY_HOLD_S:
        seen.append(await connector.health())
        await asyncio.sleep(0.1)
    # an upstream that refuses connections refuses a forwarded call at once; a frozen one may hold
    # it until the client's deadline (rule C11): a short deadline keeps the test quick
    deadline = CALL_TIMEOUT_S if late_exchange.how == "closed" else FROZEN_CALL_DEADLINE_S
    allowed = {grpc.StatusCode.UNAVAILABLE}
    if late_exchange.how == "frozen":
        allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    account_error = await call_error(
        stub.GetAccount(pb.GetAccountRequest(), timeout=deadline, metadata=connector.metadata)
    )
    positions_error = await call_error(
        stub.GetPositions(pb.GetPositionsRequest(), timeout=deadline, metadata=connector.metadata)
    )
    refused_stream = await stream_error(
        stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=connector.metadata)
    )
    connections = await connector.required_metric("upstream_connections")
    problems = []
    if connections != 0:
        problems.append(
            f"exchange_connector_upstream_connections before the upstream answers: expected 0, got {connections:g}"
        )
    wrong = sorted({status for status in seen if status != "NOT_SERVING"})
    if wrong:
        problems.append(
            f"health before the upstream answers: expected NOT_SERVING throughout {NOT_READY_HOLD_S:g} s, "
            f"got {', '.join(wrong)} ({len(seen)} checks)"
        )
    for name, error in (("GetAccount", account_error), ("GetPositions", positions_error)):
        got = "OK" if error is None else f"{error.code().name} {error.details()!r}"
        if error is None or error.code() not in allowed:
            wanted = " or ".join(sorted(code.name for code in allowed))
            problems.append(f"{name} before the upstream answers: expected {wanted}, got {got}")
    if not refused_stream.startswith("UNAVAILABLE"):
        problems.append(
            f"SubscribeAccount before the upstream answers: expected UNAVAILABLE, got {refused_stream}"
        )
    with verdicts.check("4.2.1.x31"):
        assert not problems, "; ".join(problems)

    late_exchange.server.set_account(account(0))
    late_exchange.answer()
    with verdicts.check("4.2.1.x31"):
        took = await connector.wait_health("SERVING", RECOVERY_S)
        assert took is not None, (
            f"expected health SERVING within {RECOVERY_S:g} s of the upstream answering, "
            f"got {await connector.health()}"
        )
        for topic in ("account", "positions"):
            await late_exchange.server.wait_for_subscriptions_async(topic, 1, timeout=RECOVERY_S)
        answered = await stub.GetAccount(
            pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S, metadata=connector.metadata
        )
        problem = first_problem(account(0), answered, "GetAccount once the upstream is ready")
        assert problem is None, f"expected the exchange's account, {problem}"
        connections = await connector.required_metric("upstream_connections")
        assert connections == 1, (
            f"expected exchange_connector_upstream_connections to read 1 once the upstream is ready, "
            f"got {connections:g}"
        )


# ---------------------------------------------------------------------------------------------- x32


async def subscribed_pair(
    connector: ConnectorUnderTest, channel: grpc.aio.Channel, what: str
) -> tuple[Any, Any]:
    """An account and an all-symbol positions stream on `channel`."""
    stub = connector.stub(channel)
    return (
        stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=connector.metadata),
        stub.SubscribePositions(pb.SubscribePositionsRequest(symbol=""), metadata=connector.metadata),
    )


async def read_updates(call: Any, expected: list[Any], who: str, timeout: float = 10.0) -> str | None:
    """Reads len(expected) messages (or what comes within `timeout`); what went wrong, or None."""
    got: list[Any] = []

    async def collect() -> None:
        while len(got) < len(expected):
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            got.append(message)

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        pass
    except grpc.aio.AioRpcError as error:
        return (
            f"{who}: the stream ended with {error.code().name} {error.details()!r} after {len(got)} updates"
        )
    problem = sequence_problem(expected, got)
    return None if problem is None else f"{who}: {problem}"


@pytest.mark.scenario("4.2.1.x32")
@pytest.mark.timeout(90)
async def test_every_topic_flows_and_unary_answers_are_current_after_recovery(
    connector: ConnectorUnderTest, verdicts: Verdicts
) -> None:
    """Rule C9: the exchange stops (every stream ends) and, while it is down, its account and positions
    change; once it is back, GetAccount and GetPositions answer its current state (not the view held
    before the outage), and updates flow on both topics to a client that reconnects on its old
    channel and to a new one."""
    mock = connector.mock
    stub = connector.stub()
    before = account(1)
    mock.trigger_account_update(before)
    old_channel = connector.channel()
    old_account, old_positions = await subscribed_pair(connector, old_channel, "before the outage")
    await connector.wait_subscribers("account", 1, "4.2.1.x32")
    await connector.wait_subscribers("positions", 1, "4.2.1.x32")
    mock.trigger_account_update(account(2))
    assert await read_stream(old_account, 1, "4.2.1.x32") == [account(2)], (
        "the account stream must flow first"
    )
    held = await stub.GetAccount(pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S, metadata=connector.metadata)
    assert held == account(2), f"before the outage GetAccount must answer the latest account, got {held}"
    # a client lists the positions before the outage too: the answer after it must not be this one
    listed_before = await stub.GetPositions(
        pb.GetPositionsRequest(), timeout=CALL_TIMEOUT_S, metadata=connector.metadata
    )

    await asyncio.to_thread(mock.stop)
    during = account(3)
    moved = [position("BTCUSDT", "43210.50"), position("ETHUSDT", "3210.25")]
    mock.set_account(during)
    mock.set_positions(moved)
    for call in (old_account, old_positions):
        ended = await stream_error(call, timeout=10.0)
        with verdicts.check("4.2.1.x32"):
            assert ended.startswith("UNAVAILABLE"), (
                f"a stream open when the exchange stopped: expected UNAVAILABLE, got {ended}"
            )
    with verdicts.check("4.2.1.x32"):
        connections = await connector.required_metric("upstream_connections")
        assert connections == 0, (
            f"expected exchange_connector_upstream_connections to read 0 while the exchange is down, "
            f"got {connections:g}"
        )
    await asyncio.to_thread(mock.start)

    with verdicts.check("4.2.1.x32"):
        took = await connector.wait_health("SERVING", RECOVERY_S)
        assert took is not None, f"expected health SERVING within {RECOVERY_S:g} s of the exchange's return"
        for topic in ("account", "positions"):
            try:
                await mock.wait_for_subscriptions_async(topic, 1, timeout=RECOVERY_S)
            except TimeoutError as error:
                pytest.fail(
                    f"expected the connector to open its upstream {topic} subscription again: {error}"
                )
        answered = await stub.GetAccount(
            pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S, metadata=connector.metadata
        )
        if answered == account(2):
            pytest.fail(
                "GetAccount after the recovery answered the account held before the outage "
                f"(total_balance {answered.total_balance}), expected the exchange's current one ({during.total_balance})"
            )
        problem = first_problem(during, answered, "GetAccount after the recovery")
        assert problem is None, f"expected the exchange's current account, {problem}"
        listed = await stub.GetPositions(
            pb.GetPositionsRequest(), timeout=CALL_TIMEOUT_S, metadata=connector.metadata
        )
        if list(listed.positions) == list(listed_before.positions):
            pytest.fail(
                "GetPositions after the recovery answered the positions listed before the "
                f"outage ({len(listed.positions)} positions), expected the exchange's current ones "
                f"({', '.join(f'{p.symbol} mark {p.mark_price}' for p in moved)})"
            )
        problem = sequence_problem(moved, list(listed.positions), noun="position")
        assert problem is None, (
            f"GetPositions after the recovery: expected the exchange's current positions, {problem}"
        )

    new_channel = connector.channel()
    again = await subscribed_pair(connector, old_channel, "reconnecting")
    fresh = await subscribed_pair(connector, new_channel, "new")
    await connector.wait_subscribers("account", 2, "4.2.1.x32 (after the recovery)")
    await connector.wait_subscribers("positions", 2, "4.2.1.x32 (after the recovery)")
    accounts = [account(n) for n in range(4, 9)]
    positions = [position("BTCUSDT", f"4400{n}.00") for n in range(5)]
    for update, moved_to in zip(accounts, positions, strict=True):
        mock.trigger_account_update(update)
        mock.trigger_position_update(moved_to)
    results = await asyncio.gather(
        read_updates(again[0], accounts, "the reconnecting client's account stream"),
        read_updates(again[1], positions, "the reconnecting client's positions stream"),
        read_updates(fresh[0], accounts, "the new client's account stream"),
        read_updates(fresh[1], positions, "the new client's positions stream"),
    )
    with verdicts.check("4.2.1.x32"):
        problems = [problem for problem in results if problem is not None]
        assert not problems, "after the recovery, expected updates on every topic; " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------- x33

REFUSED: dict[str, list[tuple[str, str]]] = {
    "a longer token that starts with the right one": [("authorization", f"Bearer {TOKEN}x")],
    "the right token less its last character": [("authorization", f"Bearer {TOKEN[:-1]}")],
    "the token in upper case": [("authorization", f"Bearer {TOKEN.upper()}")],
    "the token in lower case": [("authorization", f"Bearer {TOKEN.lower()}")],
    "no scheme": [("authorization", TOKEN)],
    "the Basic scheme": [("authorization", f"Basic {TOKEN}")],
    "another scheme": [("authorization", f"Token {TOKEN}")],
    "two spaces before the token": [("authorization", f"Bearer  {TOKEN}")],
    "a space after the token": [("authorization", f"Bearer {TOKEN} ")],
    "a space before the scheme": [("authorization", f" Bearer {TOKEN}")],
    "two headers, the right one first": [
        ("authorization", f"Bearer {TOKEN}"),
        ("authorization", "Bearer wrong"),
    ],
    "two headers, the right one last": [
        ("authorization", "Bearer wrong"),
        ("authorization", f"Bearer {TOKEN}"),
    ],
    "two headers, both right": [("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")],
}
ACCEPTED: dict[str, list[tuple[str, str]]] = {
    "the scheme in lower case": [("authorization", f"bearer {TOKEN}")],
    "the scheme in upper case": [("authorization", f"BEARER {TOKEN}")],
    "exactly Bearer and the token": [("authorization", f"Bearer {TOKEN}")],
}


@pytest.mark.scenario("4.2.1.x33")
@pytest.mark.requires("token_auth")
async def test_credentials_are_compared_whole_and_parsed_strictly(connectors: ConnectorFactory) -> None:
    """Rule C16: the token is compared whole and case-sensitively, the scheme `Bearer` in any case;
    every other form (another scheme, none, whitespace beyond the one space, several headers) gets
    UNAUTHENTICATED, on a unary call and on a stream. All problems are reported together."""
    connector = await connectors.start(token=TOKEN)
    stub = connector.stub()
    problems: list[str] = []
    for case, metadata in REFUSED.items():
        unary = await call_error(
            stub.GetAccount(pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S, metadata=metadata)
        )
        streamed = await stream_error(
            stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=metadata), REFUSAL_WITHIN_S
        )
        got = "OK" if unary is None else f"{unary.code().name} {unary.details()!r}"
        if unary is None or unary.code() is not grpc.StatusCode.UNAUTHENTICATED:
            problems.append(f"GetAccount with {case}: expected UNAUTHENTICATED, got {got}")
        if not streamed.startswith("UNAUTHENTICATED"):
            problems.append(f"SubscribeAccount with {case}: expected UNAUTHENTICATED, got {streamed}")
    for case, metadata in ACCEPTED.items():
        refused = await call_error(
            stub.GetAccount(pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S, metadata=metadata)
        )
        if refused is not None:
            problems.append(
                f"GetAccount with {case}: expected the account, got {refused.code().name} {refused.details()!r}"
            )
    assert not problems, f"{len(problems)} problem(s): " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------- x34


@pytest.mark.scenario("4.2.1.x34")
async def test_repeated_unary_answers_follow_the_exchange(connector: ConnectorUnderTest) -> None:
    """Rule C8: each GetAccount answers the connector's current view, so three calls, each after an
    update the connector has passed on, answer the three updates; GetPositions likewise answers the
    exchange's positions as they are now."""
    mock = connector.mock
    stub = connector.stub()
    watcher = subscribe_account(connector)
    await connector.wait_subscribers("account", 1, "4.2.1.x34")
    problems: list[str] = []
    for n in range(1, 4):
        update = account(10 + n)
        mock.trigger_account_update(update)
        seen = await read_stream(watcher, 1, "4.2.1.x34")  # the connector has it now
        assert seen == [update], f"the account stream must pass the update on first, got {seen}"
        answered = await stub.GetAccount(
            pb.GetAccountRequest(), timeout=CALL_TIMEOUT_S, metadata=connector.metadata
        )
        if answered != update:
            stale = (
                " (the answer of an earlier call: a cached answer)"
                if answered.total_balance < update.total_balance
                else ""
            )
            problems.append(
                f"GetAccount call {n}, after update {n} reached a subscriber: "
                + "; ".join(altered_fields(update, answered))
                + stale
            )
    for n, mark in enumerate(("45001.00", "45002.00", "45003.00"), start=1):
        moved = position("BTCUSDT", mark)
        mock.trigger_position_update(moved)
        listed = await stub.GetPositions(
            pb.GetPositionsRequest(symbol="BTCUSDT"), timeout=CALL_TIMEOUT_S, metadata=connector.metadata
        )
        problem = sequence_problem([moved], list(listed.positions), noun="position")
        if problem is not None:
            problems.append(
                f"GetPositions call {n}, after the exchange's BTCUSDT mark moved to {mark}: {problem}"
            )
    assert not problems, "expected every answer to follow the exchange's changes; " + "; ".join(problems)


def subscribe_account(connector: ConnectorUnderTest) -> Any:
    return connector.stub().SubscribeAccount(pb.SubscribeAccountRequest(), metadata=connector.metadata)
