"""The reference's in-process MockExchange (implementation/adapters/mock.py), the `mock` adapter of
its connector: the mock alone, in the test's event loop, no network. (The catalogue's §4.3
scenarios check the suite's own mock exchange: specs/integration/test_mock_exchange.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from implementation.adapters.mock import MockExchange
from implementation.contract.errors import ExchangeUnavailable
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb

pytestmark = [pytest.mark.timeout(10)]


async def settle() -> None:
    """Let started tasks run up to their first wait."""
    for _ in range(3):
        await asyncio.sleep(0)


async def two_callbacks(
    run: Callable[[Callable[[Any], None]], Coroutine[Any, Any, None]],
) -> tuple[list[Any], list[Any], list[asyncio.Task[None]]]:
    """Two streams of `run`, each into a list of its own, started and settled: (first, second, tasks)."""
    first: list[Any] = []
    second: list[Any] = []
    streams = [asyncio.create_task(run(first.append)), asyncio.create_task(run(second.append))]
    await settle()
    return first, second, streams


@pytest.mark.asyncio
async def test_stream_registration_blocks_until_cancelled() -> None:
    mock = MockExchange()
    received: list[pb.Account] = []
    stream = asyncio.create_task(mock.run_account_stream(received.append))
    await settle()
    assert not stream.done(), "expected run_account_stream to block while not cancelled, it returned"
    assert mock.account_streams == 1, f"expected 1 registered account stream, got {mock.account_streams}"

    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stream
    assert mock.account_streams == 0, (
        f"expected the callback unregistered after cancellation, got {mock.account_streams} streams"
    )
    mock.trigger_account_update(spec_account(equity="1.00"))
    assert received == [], f"expected no delivery after cancellation, got {len(received)} update(s)"


@pytest.mark.asyncio
async def test_trigger_account_update_reaches_every_callback() -> None:
    mock = MockExchange()
    first, second, streams = await two_callbacks(mock.run_account_stream)
    updates = [spec_account(equity=f"{n}.00") for n in range(1, 4)]
    for update in updates:
        mock.trigger_account_update(update)
    try:
        assert first == updates, f"expected callback 1 to get {len(updates)} updates in order, got {first}"
        assert second == updates, f"expected callback 2 to get {len(updates)} updates in order, got {second}"
        current = await mock.get_account()
        assert current == updates[-1], f"expected get_account to return the last update, got {current}"
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)


@pytest.mark.asyncio
async def test_trigger_position_update_reaches_every_callback_and_mock_fails_on_demand() -> None:
    mock = MockExchange()
    await mock.connect()
    first, second, streams = await two_callbacks(mock.run_position_stream)
    moved = pb.Position()
    moved.CopyFrom(spec_positions()[1])
    moved.mark_price = "2950.00"
    mock.trigger_position_update(moved)
    assert first == [moved] and second == [moved], (
        f"expected both position callbacks to get the ETHUSDT update, got {first} and {second}"
    )
    eth = await mock.get_positions("ETHUSDT")
    assert eth == [moved], f"expected get_positions('ETHUSDT') to return the update, got {eth}"

    mock.fail_with(ExchangeUnavailable("exchange down for the test"))
    results = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 2.0)
    assert all(isinstance(r, ExchangeUnavailable) for r in results), (
        f"expected both running streams to end with ExchangeUnavailable, got {results!r}"
    )
    for call in (
        mock.get_account(),
        mock.get_positions(),
        mock.connect(),
        mock.run_account_stream(first.append),
    ):
        with pytest.raises(ExchangeUnavailable, match="exchange down for the test"):
            await call
    assert mock.position_streams == 0, f"expected no stream left registered, got {mock.position_streams}"

    mock.fail_with(None)
    await mock.connect()
    assert await mock.get_account() is not None
    assert mock.connections == 2, f"expected 2 successful connect() calls counted, got {mock.connections}"
    assert mock.calls["connect"] == 3, f"expected 3 connect() calls in all, got {mock.calls['connect']}"


@pytest.mark.asyncio
async def test_held_calls_wait_until_released() -> None:
    mock = MockExchange()
    mock.hold_calls()
    pending = asyncio.create_task(mock.get_account())
    await settle()
    assert not pending.done(), "expected a held get_account to wait, it answered"
    mock.release_calls()
    account = await asyncio.wait_for(pending, 1.0)
    assert account == mock.account, f"expected the account after release, got {account}"
