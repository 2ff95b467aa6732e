"""The bearer-token interceptor: which calls need the token, and how it is read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from implementation.adapters.mock import MockExchange
from implementation.connector_core.auth import BearerTokenInterceptor
from implementation.connector_core.server import SERVICE_NAME, ExchangeServer
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(20)
TOKEN = "t0ken"


@pytest_asyncio.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = ExchangeServer(MockExchange(), token=TOKEN)
    await server.start()
    await server.wait_serving(5.0)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield channel
    finally:
        await server.stop(0.5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 6750)
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
    ],
)
async def test_authorization_header_forms(channel: grpc.aio.Channel, header: str, accepted: bool) -> None:
    stub = pb_grpc.ExchangeServiceStub(channel)
    call = stub.GetAccount(pb.GetAccountRequest(), timeout=5, metadata=(("authorization", header),))
    if accepted:
        assert (await call).total_balance
        return
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid bearer token",
    )


@pytest.mark.asyncio
async def test_health_and_reflection_need_no_token(channel: grpc.aio.Channel) -> None:
    status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert SERVICE_NAME in names, names


@pytest.mark.asyncio
async def test_streams_need_the_token(channel: grpc.aio.Channel) -> None:
    call = pb_grpc.ExchangeServiceStub(channel).SubscribePositions(
        pb.SubscribePositionsRequest(symbol="BTCUSDT")
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing bearer token",
    )


@pytest.mark.parametrize("token", ["", " padded", "two\nlines"])
def test_unusable_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="bearer token must be"):
        BearerTokenInterceptor(token)
