"""§4.2 extensions: garbage and guessed tokens are refused cheaply and quietly (rules C35, C36)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import pytest_asyncio

from harness.sut.connector import ConnectorFactory, ConnectorUnderTest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.timeout(60),
    pytest.mark.requires("token_auth", "metrics"),
]

TOKEN = "conformance-token-hostile"
# Request bodies no ExchangeService request parses from: a length running past the end, and a
# string field (symbol) that is not UTF-8.
MALFORMED = {"truncated": b"\x0a\x05ab", "not-utf8": b"\x0a\x02\xff\xfe"}
GUESSES = 200
LOG_LINES_ALLOWED = 5  # for GUESSES refused calls in a second or two (rule C36)


@pytest_asyncio.fixture
async def token_connector(connectors: ConnectorFactory) -> ConnectorUnderTest:
    return await connectors.start(token=TOKEN, subscriptions=("account",))


def _raw(channel: grpc.aio.Channel, method: str, streaming: bool) -> Any:
    path = f"/opensqt.exchange.v1.ExchangeService/{method}"
    return channel.unary_stream(path) if streaming else channel.unary_unary(path)


async def _code(call: Any, streaming: bool) -> grpc.StatusCode:
    try:
        if streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.scenario("4.2.1.x24")
async def test_malformed_requests_get_invalid_argument_without_a_traceback(
    token_connector: ConnectorUnderTest,
) -> None:
    connector = token_connector
    channel = connector.channel()
    lines_before = len(connector.program.log_lines())
    got: dict[str, grpc.StatusCode] = {}
    for authorised in (False, True):
        metadata = (("authorization", f"Bearer {TOKEN}"),) if authorised else None
        for method, streaming in (
            ("GetPositions", False),
            ("SubscribePositions", True),
            ("GetAccount", False),
        ):
            for name, body in MALFORMED.items():
                if method == "GetAccount" and name == "not-utf8":
                    continue  # GetAccountRequest has no string field
                call = _raw(channel, method, streaming)(body, metadata=metadata, timeout=5.0)
                got[f"{method} {name} {'with' if authorised else 'without'} token"] = await _code(
                    call, streaming
                )
    wrong = {case: code.name for case, code in got.items() if code is not grpc.StatusCode.INVALID_ARGUMENT}
    assert not wrong, (
        f"under rule C35, expected INVALID_ARGUMENT for every malformed request, with or without "
        f"a token, got {wrong}"
    )
    await asyncio.sleep(0.3)
    traced = connector.error_lines(since=lines_before)  # rule H4's error lines
    assert not traced, (
        f"under rule C35, expected no traceback or error line for malformed requests, got "
        f"{len(traced)}, e.g. {traced[0][:300]!r}"
    )
    counted = await connector.metric("malformed_requests_total")
    total = sum(
        [
            await connector.metric("malformed_requests_total", {"method": m}) or 0
            for m in ("GetPositions", "SubscribePositions", "GetAccount")
        ]
    )
    assert counted is not None and total >= len(got), (
        f"under rule C35, expected exchange_connector_malformed_requests_total to count the "
        f"{len(got)} malformed requests, got {total}"
    )


@pytest.mark.scenario("4.2.1.x25")
async def test_rejected_tokens_are_counted_and_logged_sparingly(token_connector: ConnectorUnderTest) -> None:
    connector = token_connector
    stub = connector.stub()
    from opensqt.exchange.v1 import exchange_pb2 as pb

    lines_before = len(connector.program.log_lines())
    codes: list[grpc.StatusCode] = []
    for n in range(GUESSES):
        try:
            await stub.GetAccount(
                pb.GetAccountRequest(), metadata=(("authorization", f"Bearer guess-{n}"),), timeout=5
            )
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code())
    assert all(code is grpc.StatusCode.UNAUTHENTICATED for code in codes), (
        f"expected UNAUTHENTICATED for every wrong token, got {sorted({c.name for c in codes})}"
    )
    counted = await connector.metric("auth_rejected_total", {"reason": "invalid"})
    assert counted is not None and counted >= GUESSES, (
        f'expected exchange_connector_auth_rejected_total{{reason="invalid"}} >= {GUESSES}, got {counted}'
    )
    await asyncio.sleep(0.3)
    logged = connector.program.log_lines()[lines_before:]
    assert 1 <= len(logged) <= LOG_LINES_ALLOWED, (
        f"expected the {GUESSES} rejected tokens to be logged (at least one line) "
        f"at most {LOG_LINES_ALLOWED} lines in all, got {len(logged)}"
    )
