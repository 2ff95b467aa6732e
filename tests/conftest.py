"""Fixtures shared by the project's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest_asyncio

from harness.perf.probes import LeakProbe


@pytest_asyncio.fixture
async def no_leaks(leak_probe: LeakProbe) -> AsyncIterator[None]:
    """Fails the test when a task, thread or fd it created outlives it (gRPC warmed up first)."""
    warm = grpc.aio.insecure_channel("127.0.0.1:1")
    await warm.close()
    leak_probe.start()
    yield
    await leak_probe.check_async(threads=0, tasks=0, fds=0, settle_s=5.0)
