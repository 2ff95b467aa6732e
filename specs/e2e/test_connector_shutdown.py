"""§3.2 graceful shutdown, for the connector as a program (3.2.1.x1, 3.2.1.x3).

The SUT's exchange_connector, fed by the harness's mock exchange, holds one open SubscribeAccount
stream while a health watch and a health poll run in the background; then it gets SIGTERM. It must
report NOT_SERVING before it exits (to the Watch or a Check: a check refused once the port closed
is no report), end the open stream with a status it sends itself, UNAVAILABLE "shutting down" (a
connection that merely drops is not a status: the client then sees a transport error such as
"Socket closed"), and exit 0 within its stop timeout.

3.2.1.x3: unary calls in flight at SIGTERM are answered. The mock exchange holds two GetPositions
the connector passed through (two symbols: calls for one symbol would share one upstream call,
rule C37) and answers them one after the other once SIGTERM has landed; both must end OK, so a
connector that cuts its calls at once, or counts itself idle when the first one leaves, fails.
An idle connector, whose call and stream ended before, must exit within IDLE_EXIT_S rather than
wait out its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.doubles.mock_exchange import MockExchangeServer, spec_account
from harness.sut.connector import ConnectorFactory, read_to_end
from harness.sut.launch import ProgramStopFailed, RunningProgram
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

SCENARIO = "3.2.1.x1"
IN_FLIGHT = "3.2.1.x3"
HELD_SYMBOLS = ("BTCUSDT", "ETHUSDT")  # one held upstream call each (calls of one symbol are shared)
RELEASE_AFTER_S = (0.3, 0.6)  # when the exchange answers each held call, counted from the SIGTERM
HOLD_WAIT_S = 5.0  # for the connector to pass the calls through to the exchange
CALL_DEADLINE_S = 10.0
SETTLE_S = 0.3  # for a cancelled stream's end to reach the connector
IDLE_EXIT_S = 2.0  # rule C10: an idle connector's exit after SIGTERM
SHUTTING_DOWN = "shutting down"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLL_INTERVAL_S = 0.01
FIRST_UPDATE_WAIT_S = 10.0
STREAM_END_WAIT_S = 5.0
HEALTH_WAIT_S = 5.0
# what a client's gRPC library says when the connection went away without a status from the server
TRANSPORT_ERRORS = ("socket closed", "connection reset", "broken pipe", "connection refused", "eof", "goaway")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@dataclass
class HealthLog:
    """What the background health checks saw, with the time (monotonic) each answer came."""

    watched: list[tuple[float, str]] = field(default_factory=list)  # Watch: statuses pushed
    polled: list[tuple[float, str]] = field(default_factory=list)  # Check: status, or the error code
    serving: asyncio.Event = field(default_factory=asyncio.Event)  # set once SERVING was seen

    def record(self, entries: list[tuple[float, str]], seen: str) -> None:
        entries.append((time.monotonic(), seen))
        if seen == "SERVING":
            self.serving.set()

    def first(self, accept: Callable[[str], bool], after: float = 0.0) -> float | None:
        """When an answer (of the watch or the poll) that `accept` holds for first came, from `after` on."""
        times = [at for at, seen in [*self.watched, *self.polled] if at >= after and accept(seen)]
        return min(times) if times else None

    def summary(self) -> str:
        def changes(entries: list[tuple[float, str]]) -> list[str]:
            shown: list[str] = []
            for _, seen in entries:
                if not shown or shown[-1] != seen:
                    shown.append(seen)
            return shown

        return (
            f"watch saw {changes(self.watched) or 'nothing'}, polls saw {changes(self.polled) or 'nothing'}"
        )


async def watch_health(channel: grpc.aio.Channel, log: HealthLog) -> None:
    try:
        async for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
            log.record(log.watched, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError as error:
        log.record(log.watched, f"ended: {error.code().name}")


async def poll_health(channel: grpc.aio.Channel, log: HealthLog) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            seen = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as error:
            seen = f"error: {error.code().name}"
        log.record(log.polled, seen)
        await asyncio.sleep(POLL_INTERVAL_S)


def account(n: int) -> pb.Account:
    """The spec's account with a balance of its own."""
    update = spec_account()
    update.total_balance = f"{10000 + n}.00"
    return update


async def first_update(
    mock: MockExchangeServer, received: list[pb.Account], reader: asyncio.Task[Any]
) -> None:
    """Trigger updates until the stream delivers one: the subscription is then surely in place."""
    deadline = time.monotonic() + FIRST_UPDATE_WAIT_S
    n = 0
    while not received:
        if reader.done():
            pytest.fail(
                f"under rule C10, expected the SubscribeAccount stream to stay open, it ended: {reader.result()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(
                f"under rule C10, expected an account update on the stream within {FIRST_UPDATE_WAIT_S} s, got none"
            )
        n += 1
        mock.trigger_account_update(account(n))
        await asyncio.sleep(0.1)


def stop_and_time(program: RunningProgram, limit: float) -> tuple[int, float]:
    """SIGTERM, wait for the exit: (exit code, when it was seen), timed here rather than by the event loop."""
    code = program.stop(limit)
    return code, time.monotonic()


def looks_like_transport_error(details: str) -> bool:
    lowered = details.lower()
    return any(marker in lowered for marker in TRANSPORT_ERRORS)


@pytest.mark.scenario(SCENARIO)
@pytest.mark.asyncio
async def test_sigterm_goes_not_serving_ends_streams_with_a_status_and_exits_zero(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory
) -> None:
    # the mock exchange is set up first, so it is stopped last: a connector left running by a
    # failure is stopped while its upstream still answers
    connector = (await connectors.start(subscriptions=("account",))).program
    health = HealthLog()
    received: list[pb.Account] = []
    async with (
        grpc.aio.insecure_channel(connector.address) as stream_channel,
        grpc.aio.insecure_channel(connector.address) as health_channel,
    ):
        call = pb_grpc.ExchangeServiceStub(stream_channel).SubscribeAccount(pb.SubscribeAccountRequest())
        reader = asyncio.create_task(read_to_end(call, received))
        watcher = asyncio.create_task(watch_health(health_channel, health))
        poller = asyncio.create_task(poll_health(health_channel, health))
        try:
            await first_update(mock_exchange, received, reader)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(health.serving.wait(), HEALTH_WAIT_S)
            assert health.serving.is_set(), (
                f"under rule C11, expected health SERVING while the connector serves, got: {health.summary()}"
            )

            limit = connector.stop_timeout_s
            signalled = time.monotonic()
            stop_failure = ""
            try:
                code, exited = await asyncio.to_thread(stop_and_time, connector, limit)
            except ProgramStopFailed as failure:
                stop_failure = str(failure)
            if stop_failure:  # outside the handler: the report shows this message, not the chain
                pytest.fail(
                    f"under rule C10, expected the connector to exit within {limit} s of SIGTERM, got: {stop_failure}"
                )
            assert code == 0, (
                f"under rule C10, expected exit code 0 after SIGTERM, got {code} "
                f"after {exited - signalled:.2f} s; {connector.tail()}"
            )

            done, _ = await asyncio.wait({reader}, timeout=STREAM_END_WAIT_S)
            if not done:
                pytest.fail(
                    f"under rule C10, expected the open SubscribeAccount stream to end once the connector exited, "
                    f"it was still open {STREAM_END_WAIT_S} s later"
                )
            ended = reader.result()
            assert ended is not None, (
                f"under rule C10, expected the open stream to end with UNAVAILABLE {SHUTTING_DOWN!r}, it ended with OK"
            )
            details = ended.details() or ""
            if SHUTTING_DOWN not in details and looks_like_transport_error(details):
                pytest.fail(
                    f"under rule C10, expected the open stream to end with a status sent by the connector, "
                    f"UNAVAILABLE {SHUTTING_DOWN!r}; got {ended.code().name} {details!r}: a transport error, "
                    "the connection dropped without a status (streams were not ended before the exit)"
                )
            assert ended.code() is grpc.StatusCode.UNAVAILABLE and SHUTTING_DOWN in details, (
                f"under rule C10, expected the open stream to end with UNAVAILABLE {SHUTTING_DOWN!r}, "
                f"got {ended.code().name} {details!r}"
            )

            # a NOT_SERVING answer was sent by the connector, so before it exited, whenever it is read;
            # calls refused once the port closes are no report: load balancers route by the health
            # status, and C11 has Watch send each change, NOT_SERVING at the start of a shutdown
            reported = health.first(lambda seen: seen == "NOT_SERVING", after=signalled)
            refused = health.first(lambda seen: seen.startswith("error: "), after=signalled)
            assert reported is not None, (
                f"under rule C10, expected health NOT_SERVING (Watch or Check) after SIGTERM, before the exit "
                f"{exited - signalled:.3f} s after it; got: {health.summary()}"
                + (
                    ""
                    if refused is None
                    else f" (first refused check {refused - signalled:.3f} s after SIGTERM)"
                )
            )
        finally:
            for task in (poller, watcher, reader):
                task.cancel()
            await asyncio.gather(poller, watcher, reader, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- 3.2.1.x3


@dataclass(frozen=True)
class Ended:
    """How one GetPositions call ended: its status, the symbols answered, when (monotonic)."""

    symbol: str
    code: grpc.StatusCode
    details: str
    symbols: tuple[str, ...]
    at: float


async def get_positions(stub: pb_grpc.ExchangeServiceAsyncStub, symbol: str) -> Ended:
    try:
        answer = await stub.GetPositions(pb.GetPositionsRequest(symbol=symbol), timeout=CALL_DEADLINE_S)
    except grpc.aio.AioRpcError as error:
        return Ended(symbol, error.code(), error.details() or "", (), time.monotonic())
    symbols = tuple(position.symbol for position in answer.positions)
    return Ended(symbol, grpc.StatusCode.OK, "", symbols, time.monotonic())


async def held_upstream(mock: MockExchangeServer, calls: list[asyncio.Task[Ended]]) -> None:
    """Until the exchange holds one upstream GetPositions per client call."""
    wanted = len(calls)
    held = await asyncio.to_thread(
        mock.wait_until, lambda m: m.held_calls("GetPositions") >= wanted, HOLD_WAIT_S
    )
    if not held:
        ended = [f"{c.result().symbol}: {c.result().code.name}" for c in calls if c.done()]
        pytest.fail(
            f"under rule C37, expected the connector to pass {wanted} GetPositions calls "
            f"({', '.join(HELD_SYMBOLS)}) through to the exchange within {HOLD_WAIT_S} s, "
            f"the exchange held {mock.held_calls('GetPositions')}; calls already ended: {ended or 'none'}"
        )


def answered_problem(ended: Ended, released_after: float, signalled: float) -> str | None:
    """What is wrong with a call the exchange answered `released_after` s after the SIGTERM, if anything."""
    if ended.code is not grpc.StatusCode.OK:
        return (
            f"under rule C10, expected GetPositions({ended.symbol}), in flight at SIGTERM, to end OK with "
            f"the exchange's answer (given {released_after} s after SIGTERM), got {ended.code.name} "
            f"{ended.details!r} {ended.at - signalled:.2f} s after SIGTERM"
        )
    if ended.symbols != (ended.symbol,):
        return (
            f"under rule C10, expected GetPositions({ended.symbol}) in flight at SIGTERM to answer the "
            f"exchange's position [{ended.symbol}], got {list(ended.symbols)}"
        )
    return None


async def exit_after_sigterm(program: RunningProgram, signalled: float) -> tuple[int, float]:
    """The exit code of a program SIGTERMed at `signalled`, and how long after it the exit came."""
    limit = program.stop_timeout_s
    try:
        code = await asyncio.to_thread(program.wait, limit)
    except TimeoutError:
        code = None
    if code is None:  # outside the handler: the report shows this message, not the chain
        pytest.fail(
            f"under rule C10, expected the connector to exit within {limit} s of SIGTERM, "
            f"it was still running; {program.tail()}"
        )
    return code, time.monotonic() - signalled


@pytest.mark.scenario(IN_FLIGHT)
@pytest.mark.asyncio
async def test_unary_calls_in_flight_at_sigterm_are_answered(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory
) -> None:
    connector = (await connectors.start()).program
    mock_exchange.hold_calls("GetPositions")
    async with grpc.aio.insecure_channel(connector.address) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        calls = [asyncio.create_task(get_positions(stub, symbol)) for symbol in HELD_SYMBOLS]
        try:
            await held_upstream(mock_exchange, calls)
            signalled = time.monotonic()
            os.kill(connector.pid, signal.SIGTERM)
            for after in RELEASE_AFTER_S:  # one at a time: the second is in flight when the first leaves
                await asyncio.sleep(max(0.0, signalled + after - time.monotonic()))
                mock_exchange.release_calls("GetPositions")
            ended = await asyncio.gather(*calls)
            code, took = await exit_after_sigterm(connector, signalled)
        finally:
            mock_exchange.hold_calls("GetPositions", enabled=False)
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
    problems = [
        answered_problem(e, after, signalled) for e, after in zip(ended, RELEASE_AFTER_S, strict=True)
    ]
    assert not any(problems), "; ".join(p for p in problems if p)
    assert code == 0, (
        f"under rule C10, expected exit code 0 after SIGTERM, got {code} after {took:.2f} s; {connector.tail()}"
    )


@pytest.mark.scenario(IN_FLIGHT)
@pytest.mark.asyncio
async def test_idle_connector_exits_soon_after_sigterm(
    mock_exchange: MockExchangeServer, connectors: ConnectorFactory
) -> None:
    connector = (await connectors.start()).program
    async with grpc.aio.insecure_channel(connector.address) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        # a call and a stream that end before the SIGTERM: each must leave the connector's count
        ended = await get_positions(stub, "")
        assert ended.code is grpc.StatusCode.OK, (
            f"under rule C10, expected GetPositions to answer OK before the shutdown, "
            f"got {ended.code.name} {ended.details!r}"
        )
        received: list[pb.Account] = []
        stream = stub.SubscribeAccount(pb.SubscribeAccountRequest())
        reader = asyncio.create_task(read_to_end(stream, received))
        try:
            await first_update(mock_exchange, received, reader)
        finally:
            stream.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await asyncio.sleep(SETTLE_S)
        signalled = time.monotonic()
        os.kill(connector.pid, signal.SIGTERM)
        code, took = await exit_after_sigterm(connector, signalled)
    assert code == 0, (
        f"under rule C10, expected exit code 0 after SIGTERM, got {code} after {took:.2f} s; {connector.tail()}"
    )
    assert took <= IDLE_EXIT_S, (
        f"under rule C10, expected an idle connector (no call in flight) to exit within {IDLE_EXIT_S} s of "
        f"SIGTERM, got its exit {took:.2f} s after it (did it wait out its grace period for calls that "
        "had already ended?)"
    )
