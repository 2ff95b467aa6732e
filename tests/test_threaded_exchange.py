"""ThreadedExchange: an exchange run on an event loop of its own thread, its updates delivered on
the caller's loop in order, its calls and streams cancelled with their callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from implementation.adapters.threaded import THREAD_NAME, ThreadedExchange
from implementation.contract.errors import ExchangeUnavailable
from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]


class ScriptedExchange:
    """Sends `count` accounts, then fails or waits; records the threads it ran on."""

    def __init__(self, count: int, *, fail: bool) -> None:
        self.count, self.fail = count, fail
        self.threads: set[str] = set()
        self.cancelled = threading.Event()
        self.closed = False

    async def connect(self) -> None:
        self.threads.add(threading.current_thread().name)

    async def close(self) -> None:
        self.closed = True

    async def get_account(self) -> pb.Account:
        self.threads.add(threading.current_thread().name)
        return spec_account()

    async def get_positions(self, symbol: str = "") -> list[pb.Position]:
        return []

    async def run_account_stream(self, callback: Callable[[pb.Account], None]) -> None:
        self.threads.add(threading.current_thread().name)
        for n in range(self.count):
            callback(spec_account(total_balance=f"{n}.00"))
            if n % 7 == 0:
                await asyncio.sleep(0)  # some updates in a batch, some alone
        if self.fail:
            raise ExchangeUnavailable("the exchange went away")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def run_position_stream(self, callback: Callable[[pb.Position], None]) -> None:
        await asyncio.Event().wait()


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedExchange, ThreadedExchange]]:
    inner = ScriptedExchange(500, fail=True)
    threaded = ThreadedExchange(lambda: inner)
    try:
        yield inner, threaded
    finally:
        await threaded.close()


async def test_updates_arrive_in_order_on_the_callers_loop_then_the_failure(
    scripted: tuple[ScriptedExchange, ThreadedExchange],
) -> None:
    inner, threaded = scripted
    got: list[str] = []
    threads: set[str] = set()

    def callback(account: pb.Account) -> None:
        got.append(account.total_balance)
        threads.add(threading.current_thread().name)

    with pytest.raises(ExchangeUnavailable, match="went away"):
        await threaded.run_account_stream(callback)
    assert got == [f"{n}.00" for n in range(500)], "every update, in order, before the failure"
    assert threads == {threading.current_thread().name}
    assert inner.threads == {THREAD_NAME}


async def test_cancelling_the_caller_cancels_the_upstream_stream() -> None:
    inner = ScriptedExchange(3, fail=False)
    threaded = ThreadedExchange(lambda: inner)
    got: list[pb.Account] = []
    all_three = asyncio.Event()

    def callback(account: pb.Account) -> None:
        got.append(account)
        if len(got) == 3:
            all_three.set()

    try:
        reading = asyncio.ensure_future(threaded.run_account_stream(callback))
        await asyncio.wait_for(all_three.wait(), 5.0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert await asyncio.to_thread(inner.cancelled.wait, 5.0)
    finally:
        await threaded.close()
    assert inner.closed and threaded.thread is not None and not threaded.thread.is_alive()


async def test_a_callback_that_raises_ends_the_stream_with_it() -> None:
    inner = ScriptedExchange(10, fail=False)
    threaded = ThreadedExchange(lambda: inner)

    def callback(account: pb.Account) -> None:
        if account.total_balance == "4.00":
            raise ValueError("refused")

    try:
        with pytest.raises(ValueError, match="refused"):
            await threaded.run_account_stream(callback)
        assert await asyncio.to_thread(inner.cancelled.wait, 5.0)
    finally:
        await threaded.close()


async def test_calls_run_on_the_upstream_thread_and_close_ends_it(
    scripted: tuple[ScriptedExchange, ThreadedExchange],
) -> None:
    inner, threaded = scripted
    await threaded.connect()
    assert (await threaded.get_account()).total_balance == spec_account().total_balance
    assert inner.threads == {THREAD_NAME}
    await threaded.close()
    assert inner.closed and threaded.thread is not None and not threaded.thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        await threaded.get_account()
