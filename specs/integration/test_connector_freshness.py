"""§4.2 extensions: the connector stays fresh or says so (rules C30-C34 of docs/sut-manifest.md).

The upstream is a mock exchange behind a relay the test can freeze: nothing in or out, HTTP/2
pings included, as when the exchange's process is stopped (SIGSTOP) with its sockets open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import grpc
import pytest

from harness.fixtures import MetricRecorder
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.connector_program import (  # noqa: F401 - fixtures
    DATA_AGE_KEY,
    Connector,
    freezable_mock_fixture,
    get_account,
    program_connector_fixture,
    stamped_account,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(60)]

HUNG_DETECTED_WITHIN_S = 10.0  # rule C31
MAX_DATA_AGE_MS = 5000  # rule C30
AGE_SLACK_MS = 600  # the connector rounds and checks on a tick; the suite reads on its own clock
STAYS_DOWN_S = 3.0  # rule C31: health stays NOT_SERVING this long after detection, still frozen
QUIET_FOR_S = 8.0  # rule C33: longer than the bound, so a connector that counts silence as age fails


async def flowing_stream(connector: Connector) -> Any:
    """A SubscribeAccount stream that has delivered its first update."""
    stream = connector.stub().SubscribeAccount(pb.SubscribeAccountRequest())
    await stream.initial_metadata()
    connector.mock.trigger_account_update(stamped_account(1))
    first = cast(pb.Account, await stream.read())
    assert first.total_balance == "10001.00", f"expected the first update (10001.00) to arrive, got {first}"
    return stream


async def _stream_status(call: Any, within: float) -> tuple[int, grpc.StatusCode | str]:
    """(messages read, the stream's final code) or (messages, "still open") after `within` s."""
    read = 0

    async def drain() -> grpc.StatusCode:
        nonlocal read
        try:
            while (await call.read()) is not grpc.aio.EOF:
                read += 1
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    try:
        return read, await asyncio.wait_for(drain(), within)
    except asyncio.TimeoutError:
        return read, "still open"


async def _stays_not_serving(connector: Connector, until: float) -> None:
    """Health reads NOT_SERVING at every look until `until` (monotonic) while the upstream stays
    frozen: a connection still open, or a channel that says it is ready, is not an answer."""
    while (left := until - time.monotonic()) > 0:
        health = await connector.health()
        assert health == "NOT_SERVING", (
            f"under rule C31, expected health to stay NOT_SERVING while the upstream stays frozen, got "
            f"{health} {STAYS_DOWN_S - left:.1f} s after the hang was detected"
        )
        await asyncio.sleep(0.1)


@pytest.mark.scenario("4.2.1.x20")
async def test_hung_upstream_is_detected_and_streams_end(
    program_connector: Connector, metrics: MetricRecorder
) -> None:
    connector = program_connector
    stub = connector.stub()
    stream = await flowing_stream(connector)
    assert await connector.health() == "SERVING", "expected SERVING before the freeze"

    frozen_at = time.monotonic()
    connector.mock.freeze()
    detected = await connector.wait_health("NOT_SERVING", HUNG_DETECTED_WITHIN_S)
    assert detected is not None, (
        f"expected NOT_SERVING within {HUNG_DETECTED_WITHIN_S:g} s of the upstream "
        f"freezing, got {await connector.health()} after {time.monotonic() - frozen_at:.1f} s"
    )
    metrics.record("hung_upstream_detection_s", detected, "s")
    detected_at = time.monotonic()
    _, code = await _stream_status(stream, max(0.5, HUNG_DETECTED_WITHIN_S - (time.monotonic() - frozen_at)))
    assert code is grpc.StatusCode.UNAVAILABLE, (
        f"expected the open stream to end with UNAVAILABLE within "
        f"{HUNG_DETECTED_WITHIN_S:g} s of the freeze, got {code}"
    )
    await _stays_not_serving(connector, detected_at + STAYS_DOWN_S)

    connector.mock.thaw()
    back = await connector.wait_health("SERVING", 15.0)
    assert back is not None, (
        f"expected SERVING again within 15 s of the upstream thawing, got {await connector.health()}"
    )
    again = stub.SubscribeAccount(pb.SubscribeAccountRequest())
    await again.initial_metadata()
    await connector.mock.wait_for_subscriptions_async("account", 1, timeout=10.0)
    connector.mock.trigger_account_update(stamped_account(2))
    update: Any = await asyncio.wait_for(again.read(), 10.0)
    assert update is not grpc.aio.EOF and update.total_balance == "10002.00", (
        f"expected a new subscription to receive updates after the thaw, got {update}"
    )
    again.cancel()


@pytest.mark.scenario("4.2.1.x21")
async def test_get_account_never_serves_a_frozen_view_as_current(program_connector: Connector) -> None:
    connector = program_connector
    stub = connector.stub()
    connector.mock.trigger_account_update(stamped_account(1))
    await asyncio.sleep(0.3)
    account, age = await get_account(stub)
    assert account is not None and isinstance(age, int), (
        f"under rule C32, expected GetAccount OK with an {DATA_AGE_KEY} header, got {age!r}"
    )

    frozen_at = time.monotonic()
    connector.mock.freeze()
    answers: list[str] = []
    refused: grpc.aio.AioRpcError | None = None
    while time.monotonic() - frozen_at < HUNG_DETECTED_WITHIN_S:
        asked = time.monotonic() - frozen_at
        account, outcome = await get_account(stub, timeout=2.0)
        since = time.monotonic() - frozen_at
        if account is not None:
            # an answer served as current must say it is, and be within the bound
            assert isinstance(outcome, int) and outcome <= MAX_DATA_AGE_MS + AGE_SLACK_MS, (
                f"under rule C30, expected GetAccount {since:.1f} s into a frozen upstream to answer "
                f"UNAVAILABLE or data at most {MAX_DATA_AGE_MS} ms old, got OK with data age {outcome!r} ms"
            )
            # nothing comes from a frozen upstream: the view is at least as old as the freeze
            assert outcome >= asked * 1000 - AGE_SLACK_MS, (
                f"under rule C32, expected {DATA_AGE_KEY} to count the milliseconds since the upstream's "
                f"last sign of life, at least {max(0, int(asked * 1000) - AGE_SLACK_MS)} for a call made "
                f"{asked:.1f} s into the freeze, got {outcome}"
            )
            answers.append(f"OK {outcome} ms")
        else:
            answers.append(outcome.code().name)
            if outcome.code() is grpc.StatusCode.UNAVAILABLE:
                refused = outcome
                break
        await asyncio.sleep(0.25)
    assert refused is not None, (
        f"under rule C30, expected GetAccount to answer UNAVAILABLE within "
        f"{HUNG_DETECTED_WITHIN_S:g} s of the upstream freezing, got {answers[-5:]}"
    )
    details = refused.details() or ""
    assert any(word in details for word in ("stale", "age", "sign of life", "lag")), (
        f"under rule C30, expected the UNAVAILABLE message to name the data age or lag, got {details!r}"
    )


@pytest.mark.scenario("4.2.1.x22")
@pytest.mark.requires("metrics")
async def test_quiet_upstream_keeps_health_and_a_small_data_age(program_connector: Connector) -> None:
    connector = program_connector
    stub = connector.stub()
    stream = await flowing_stream(connector)
    started = time.monotonic()
    worst = 0
    while time.monotonic() - started < QUIET_FOR_S:
        health = await connector.health()
        assert health == "SERVING", (
            f"under rule C33, expected SERVING while the upstream is quiet but alive, got {health} "
            f"after {time.monotonic() - started:.1f} s without updates"
        )
        account, age = await get_account(stub)
        assert account is not None and isinstance(age, int), (
            f"under rule C32, expected GetAccount OK with {DATA_AGE_KEY} during a quiet market, got {age!r}"
        )
        worst = max(worst, age)
        await asyncio.sleep(0.25)
    assert worst <= MAX_DATA_AGE_MS, (
        f"under rule C33, expected the data age of a quiet but live upstream to stay within "
        f"{MAX_DATA_AGE_MS} ms, got {worst} ms"
    )
    age_metric = await connector.metric("data_age_seconds")
    assert age_metric is not None and age_metric * 1000 <= MAX_DATA_AGE_MS, (
        f"under rule C32, expected exchange_connector_data_age_seconds within "
        f"{MAX_DATA_AGE_MS / 1000:g} s, got {age_metric}"
    )
    # the exchange sent nothing while it was quiet, so the stream's next message is the next update
    after = stamped_account(2)
    connector.mock.trigger_account_update(after)
    message: Any = await asyncio.wait_for(stream.read(), 10.0)
    got = "the end of the stream" if message is grpc.aio.EOF else f"total_balance {message.total_balance}"
    assert message is not grpc.aio.EOF and message.total_balance == after.total_balance, (
        f"under rule C4, expected the stream's next message after {QUIET_FOR_S:g} s of quiet to be the next "
        f"update (total_balance {after.total_balance}), got {got}"
        + (
            " (the last update again: it reached the subscriber twice)"
            if got == f"total_balance {stamped_account(1).total_balance}"
            else ""
        )
    )
    stream.cancel()
