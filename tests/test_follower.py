"""StateFollower against the harness's mock exchange over loopback gRPC: start before the server
is up, first read, live updates, a server restart (one resync, fresh data) and a clean stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from harness.doubles.mock_exchange import MockExchangeServer
from harness.ports import free_port
from implementation.client_library.remote_exchange import ReconnectPolicy, RemoteExchange
from implementation.follower import StateFollower
from implementation.state import LiveState
from opensqt.exchange import testdata

pytestmark = pytest.mark.timeout(60)
FAST = ReconnectPolicy(initial_backoff=0.05, max_backoff=0.3)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"expected {what} within {timeout} s")
        await asyncio.sleep(0.02)


class Running:
    def __init__(self, server: MockExchangeServer) -> None:
        self.server = server
        self.state = LiveState()
        self.exchange = RemoteExchange(server.address, connect_timeout=0.5, call_timeout=2.0, reconnect=FAST)
        self.follower = StateFollower(self.exchange, self.state, logger=logging.getLogger("test.follower"))
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.follower.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.follower.stop()


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    server = MockExchangeServer(port=free_port())  # a known port: the server starts later, and restarts
    subject = Running(server)
    try:
        yield subject
    finally:
        await subject.stop()
        if server.running:  # let the server see the client's cancellations before it stops
            await eventually(
                lambda: server.subscriptions("account") + server.subscriptions("positions") == 0,
                "the mock exchange to see the streams closed",
                timeout=5.0,
            )
        server.stop(grace=0.1)
        server.raise_violations()


@pytest.mark.asyncio
async def test_waits_for_the_server_then_reads_and_follows(running: Running) -> None:
    running.start()
    await asyncio.sleep(0.8)
    assert not running.state.ready, "expected not ready while the server is down"
    assert running.state.not_ready_reason, "expected a reason while the server is down"
    running.server.set_account(testdata.spec_account(total_balance="111.11"))
    running.server.start()
    await eventually(lambda: running.state.ready, "the state ready once the server is up")
    assert running.state.account is not None and running.state.account.total_balance == "111.11", (
        f"expected the first read's account, got {running.state.account}"
    )
    assert list(running.state.positions) == ["BTCUSDT", "ETHUSDT"], f"got {list(running.state.positions)}"
    await asyncio.to_thread(running.server.wait_for_subscriptions, "positions", 1)
    position = testdata.spec_positions()[0]
    position.mark_price = "43210.00"
    running.server.trigger_position_update(position)
    await eventually(
        lambda: running.state.positions["BTCUSDT"].mark_price == "43210.00", "the position update applied"
    )


@pytest.mark.asyncio
async def test_server_restart_resyncs_once_with_fresh_data(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.follower")
    running.server.start()
    running.start()
    await eventually(lambda: running.state.ready, "the state ready")
    running.server.stop(grace=0.1)
    await eventually(lambda: not running.state.connected, "the loss of the server noticed")
    assert "lost" in running.state.not_ready_reason, f"got {running.state.not_ready_reason!r}"
    running.server.set_account(testdata.spec_account(total_balance="222.22"))
    running.server.start()
    await eventually(lambda: running.state.ready, "the state ready again after the restart")
    assert running.state.account is not None and running.state.account.total_balance == "222.22", (
        f"expected fresh data after the restart, got {running.state.account}"
    )
    await asyncio.sleep(0.3)
    reconnects = [r for r in caplog.records if getattr(r, "event", "") == "reconnect"]
    assert len(reconnects) == 1, f"expected one reconnect event for both streams, got {len(reconnects)}"
    running.server.trigger_account_update(testdata.spec_account(total_balance="333.33"))
    await eventually(
        lambda: running.state.account is not None and running.state.account.total_balance == "333.33",
        "the update after the restart applied",
    )


@pytest.mark.asyncio
async def test_stop_ends_everything(running: Running) -> None:
    running.server.start()
    running.start()
    await eventually(lambda: running.state.ready, "the state ready")
    await running.stop()
    updates = running.state.updates
    running.server.trigger_account_update(testdata.spec_account(total_balance="9.99"))
    await asyncio.sleep(0.3)
    assert running.state.updates == updates, (
        f"expected no update after stop, got {running.state.updates - updates}"
    )
    assert running.server.subscriptions("account") == 0, "expected the subscription closed on the server"
