"""Rules of the connector's contract that the spec leaves open and docs/sut-manifest.md writes down,
each a scenario of its own: a stream's response headers come as soon as its subscription is
registered (rule C7), and GetAccount is answered from the connector's current view (rule C8)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.integration.conftest import SERVER_TESTS, ConnectorUnderTest

pytestmark = [*SERVER_TESTS, pytest.mark.timeout(60)]
HEADERS_WITHIN_S = 1.0
VIEW_CALLS = 50
UPSTREAM_CALLS_ALLOWED = 5  # a connector may refresh its view now and then, never once per call


@pytest.mark.scenario("4.2.1.x7")
async def test_streams_send_their_headers_once_subscribed(connector: ConnectorUnderTest) -> None:
    """With no update flowing, each stream's response headers arrive within a second of the call:
    a client can tell its subscription is live before the first update (rule C7)."""
    stub = connector.stub()
    calls = {
        "SubscribeAccount": stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=connector.metadata),
        "SubscribePositions": stub.SubscribePositions(
            pb.SubscribePositionsRequest(symbol="BTCUSDT"), metadata=connector.metadata
        ),
    }
    late = []
    for name, call in calls.items():
        started = time.monotonic()
        try:
            await asyncio.wait_for(call.initial_metadata(), HEADERS_WITHIN_S + 1.0)
            took = time.monotonic() - started
        except asyncio.TimeoutError:
            took = float("inf")
        except grpc.aio.AioRpcError as error:
            pytest.fail(f"{name} failed: {error.code()} {error.details()!r}")
        if took > HEADERS_WITHIN_S:
            late.append(f"{name} after {took:.2f} s" if took != float("inf") else f"{name}: none")
        call.cancel()
    assert not late, (
        f"expected response headers within {HEADERS_WITHIN_S:.0f} s of subscribing, "
        f"with no update sent; got {', '.join(late)}: clients cannot tell when their subscription is live"
    )


@pytest.mark.scenario("4.2.1.x8")
async def test_get_account_is_answered_from_the_connectors_view(connector: ConnectorUnderTest) -> None:
    """While its account subscription is live, the connector answers GetAccount from its own current
    view: client calls do not each become a call to the exchange (rule C8)."""
    stub = connector.stub()
    first = await stub.GetAccount(pb.GetAccountRequest(), timeout=5, metadata=connector.metadata)
    before = connector.mock.calls["GetAccount"]
    answers = await asyncio.gather(
        *(
            stub.GetAccount(pb.GetAccountRequest(), timeout=5, metadata=connector.metadata)
            for _ in range(VIEW_CALLS)
        )
    )
    upstream = connector.mock.calls["GetAccount"] - before
    assert all(answer.total_balance == first.total_balance for answer in answers), (
        "expected every answer to carry the account the exchange holds"
    )
    assert upstream <= UPSTREAM_CALLS_ALLOWED, (
        f"expected {VIEW_CALLS} GetAccount calls to be answered from the connector's "
        f"view (at most {UPSTREAM_CALLS_ALLOWED} calls to the exchange), got {upstream} upstream GetAccount calls"
    )
