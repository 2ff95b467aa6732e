"""§3.2 graceful shutdown, for the connector as a program (3.2.1.x1).

The SUT's exchange_connector, fed by the harness's mock exchange, holds one open SubscribeAccount
stream while a health watch and a health poll run in the background; then it gets SIGTERM. It must
report NOT_SERVING before it exits (to the Watch or a Check: a check refused once the port closed
is no report), end the open stream with a status it sends itself, UNAVAILABLE "shutting down" (a
connection that merely drops is not a status: the client then sees a transport error such as
"Socket closed"), and exit 0 within its stop timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
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
