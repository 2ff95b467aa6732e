"""Fixtures shared by the project's own tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import pytest_asyncio
import uvicorn

from harness.perf.probes import LeakProbe
from implementation.adapters.mock import MockExchange
from implementation.connector_core.hub import Hub
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc
from tests import session_order


@pytest_asyncio.fixture
async def mock() -> MockExchange:
    """The reference's in-process mock exchange adapter."""
    return MockExchange()


@asynccontextmanager
async def serving(hub: Hub) -> AsyncIterator[Hub]:
    """The hub started and serving (within 2 s); stopped on the way out."""
    await hub.start()
    await hub.wait_serving(2.0)
    try:
        yield hub
    finally:
        await hub.stop()


@pytest_asyncio.fixture
async def no_leaks(leak_probe: LeakProbe) -> AsyncIterator[None]:
    """Fails the test when a task, thread or fd it created outlives it (gRPC warmed up first)."""
    warm = grpc.aio.insecure_channel("127.0.0.1:1")
    await warm.close()
    leak_probe.start()
    yield
    await leak_probe.check_async(threads=0, tasks=0, fds=0, settle_s=5.0)


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (the test runner keeps them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def uvicorn_serving(app: Any, **options: Any) -> AsyncIterator[int]:
    """`app` served by uvicorn (its `options`) on a loopback socket of its own: the port, once started."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = _QuietServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", **options))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "expected uvicorn to start"
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        sock.close()


class UnimplementedExchange(pb_grpc.ExchangeServiceServicer):
    """Every method answers UNIMPLEMENTED; subclasses override the ones a test needs."""

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetAccount")
        raise AssertionError("abort() raises")

    async def GetPositions(self, request: pb.GetPositionsRequest, context: Any) -> pb.GetPositionsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetPositions")
        raise AssertionError("abort() raises")

    async def SubscribeAccount(
        self, request: pb.SubscribeAccountRequest, context: Any
    ) -> AsyncIterator[pb.Account]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "SubscribeAccount")
        yield pb.Account()

    async def SubscribePositions(
        self, request: pb.SubscribePositionsRequest, context: Any
    ) -> AsyncIterator[pb.Position]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "SubscribePositions")
        yield pb.Position()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Alone first, then the rest beside the fault matrix, then the matrix's verdicts, then what
    judges time alone (tests/session_order.py)."""
    session_order.order(items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    session_order.before(item)
