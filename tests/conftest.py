"""Fixtures shared by the project's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest_asyncio

from harness.perf.probes import LeakProbe
from implementation.adapters.mock import MockExchange
from implementation.connector_core.hub import Hub


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
