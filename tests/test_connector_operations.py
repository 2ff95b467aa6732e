"""The reference connector's operational details: the shutdown's count of cancelled calls, /metrics
without a thread per connection, the freshness figures and shared GetPositions calls."""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import httpx
import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from implementation.adapters.grpc_upstream import GrpcExchange
from implementation.adapters.mock import MockExchange
from implementation.connector.metrics import MetricsServer
from implementation.connector.metrics_http import MAX_CONNECTIONS
from implementation.connector_core.freshness import Freshness, FreshnessPolicy
from implementation.connector_core.hub import Hub
from implementation.connector_core.server import ExchangeServer
from implementation.connector_core.shared_calls import SharedCalls
from implementation.contract.errors import ExchangeUnavailable
from implementation.logs import record_fields
from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(30)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.asyncio
async def test_shutdown_counts_the_calls_it_cancelled() -> None:
    calls = 5
    handler = _Records()
    logger = logging.getLogger("implementation.connector_core.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    mock = MockExchangeServer().start()
    server = ExchangeServer(GrpcExchange(mock.address), grace_period=0.2)
    channel: grpc.aio.Channel | None = None
    try:
        await server.start("127.0.0.1:0")
        await server.wait_serving(10.0)
        mock.stall_calls(True)  # no account seen yet: GetAccount asks the exchange, which holds it
        channel = grpc.aio.insecure_channel(server.address)
        stub = pb_grpc.ExchangeServiceStub(channel)
        pending = [
            asyncio.ensure_future(stub.GetAccount(pb.GetAccountRequest(), timeout=20)) for _ in range(calls)
        ]
        await asyncio.to_thread(mock.wait_until, lambda m: m.stalled_calls("GetAccount") >= calls, 10.0)
        await server.stop()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        logger.removeHandler(handler)
        if channel is not None:
            await channel.close()
        await server.stop()
        mock.stall_calls(False)
        mock.stop()
    done = [record_fields(r) for r in handler.records if getattr(r, "msg", "") == "shutdown_complete"]
    assert done and done[0]["cancelled_calls"] == calls, f"expected cancelled_calls={calls}, got {done}"


@pytest.mark.asyncio
async def test_metrics_are_served_without_a_thread_per_connection() -> None:
    metrics = MetricsServer(Hub(MockExchange()))
    port = await metrics.start("127.0.0.1:0")
    before = set(threading.enumerate())  # other tests' threads may end meanwhile: count only new ones
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(MAX_CONNECTIONS // 2):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metr")  # an unfinished request head, held open
            idle.append(writer)
        await asyncio.sleep(0.2)
        started = set(threading.enumerate()) - before
        assert not started, f"the metrics endpoint started threads for idle connections: {started}"
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        assert response.status_code == 200 and "exchange_connector_subscribers" in response.text
    finally:
        for writer in idle:
            writer.close()
        await metrics.stop()


def test_upstream_lag_counts_from_the_connections_best_case(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_800_000_000.0]
    monkeypatch.setattr("implementation.connector_core.freshness.time.time", lambda: clock[0])
    freshness = Freshness()

    def read(stamp: float) -> None:
        account = spec_account()
        account.updated_at.FromNanoseconds(int(stamp * 1e9))
        freshness.account_read(account)

    read(1_700_000_000.0)  # a stamp of long ago: a constant offset is the baseline, not lag
    assert freshness.upstream_lag == 0.0
    clock[0] += 1.0
    read(1_700_000_001.0)  # read as punctually as the first
    assert freshness.upstream_lag == pytest.approx(0.0)
    clock[0] += 7.0
    read(1_700_000_002.0)  # stamped 1 s after the one before, read 7 s after it: 6 s behind
    assert freshness.upstream_lag == pytest.approx(6.0)
    assert "upstream lag bound 5 s" in (freshness.stale_reason(5.0) or "")
    read(1_700_000_001.5)  # an older stamp again (an unchanged account resent) says nothing
    assert freshness.upstream_lag == pytest.approx(6.0)


def test_freshness_policy_checks_its_bounds() -> None:
    with pytest.raises(ValueError, match="probe_after"):
        FreshnessPolicy(max_age=1.0, probe_after=1.0)


@pytest.mark.asyncio
async def test_concurrent_calls_for_one_key_share_one_call() -> None:
    shared: SharedCalls[str, int] = SharedCalls()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> int:
        started.set()
        await release.wait()
        return 7

    callers = [asyncio.ensure_future(shared.call("BTCUSDT", slow)) for _ in range(10)]
    await started.wait()
    callers[0].cancel()  # one caller leaving does not cancel the call for the others
    release.set()
    answers = await asyncio.gather(*callers[1:])
    assert answers == [7] * 9 and (shared.started, shared.joined) == (1, 9)


@pytest.mark.asyncio
async def test_the_upstream_channel_carries_the_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grpc adapter's one channel pings a silent connection (rule C31): guards the override of
    the client library's channel construction."""
    seen: list[dict[str, object]] = []
    real = grpc.aio.insecure_channel

    def capture(target: str, options: object = None, **kwargs: object) -> grpc.aio.Channel:
        seen.append(dict(options or []))  # type: ignore[call-overload]
        return real(target, options=options, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(grpc.aio, "insecure_channel", capture)
    exchange = GrpcExchange("127.0.0.1:1", keepalive=7.0, keepalive_timeout=3.0, connect_timeout=0.1)
    with pytest.raises(ExchangeUnavailable):  # nothing listens there: only the channel's options matter
        await exchange.connect()
    await exchange.close()
    assert (
        seen
        and seen[0].get("grpc.keepalive_time_ms") == 7000
        and seen[0].get("grpc.keepalive_timeout_ms") == 3000
    )
