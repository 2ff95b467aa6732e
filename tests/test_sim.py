"""SimExchange: deterministic, valid, and moving on its own."""

from __future__ import annotations

import asyncio

import pytest

from implementation.adapters.sim import DEFAULT_SYMBOLS, SimExchange
from implementation.contract.errors import ExchangeUnavailable
from implementation.contract.validation import validate_account, validate_position
from opensqt.exchange.v1 import exchange_pb2 as pb

pytestmark = pytest.mark.timeout(10)


def run(seed: int, steps: int) -> tuple[list[pb.Position], pb.Account]:
    sim = SimExchange(seed=seed, interval=None, clock=lambda: 1_700_000_000.0)
    for _ in range(steps):
        sim.step()
    return sim.positions(), sim.account()


def test_same_seed_same_values_different_seed_different_values() -> None:
    assert run(7, 500) == run(7, 500), "the values must depend only on the seed and the number of steps"
    assert run(7, 500)[0] != run(8, 500)[0], "another seed must move the prices differently"


def test_every_value_stays_a_valid_decimal_string_over_many_steps() -> None:
    sim = SimExchange(seed=3, interval=None)
    for step in range(2000):
        sim.step()
        validate_account(sim.account())
        for position in sim.positions():
            validate_position(position)
            assert not position.mark_price.startswith("-"), f"step {step}: a price went negative: {position}"
    assert [p.symbol for p in sim.positions()] == list(DEFAULT_SYMBOLS)


def test_account_follows_the_positions() -> None:
    positions, account = run(11, 100)
    pnl = sum(float(p.unrealized_pnl) for p in positions)
    assert abs(float(account.unrealized_pnl) - pnl) < 0.011, f"account pnl {account.unrealized_pnl} vs {pnl}"
    assert abs(float(account.equity) - float(account.total_balance) - pnl) < 0.011


@pytest.mark.asyncio
async def test_moves_on_its_own_and_streams_until_closed() -> None:
    sim = SimExchange(seed=1, interval=0.01, symbols=("BTCUSDT", "ADAUSDT"))
    accounts: list[pb.Account] = []
    positions: list[pb.Position] = []
    await sim.connect()
    streams = [
        asyncio.create_task(sim.run_account_stream(accounts.append)),
        asyncio.create_task(sim.run_position_stream(positions.append)),
    ]
    await asyncio.sleep(0.2)
    await sim.close()
    results = await asyncio.gather(*streams, return_exceptions=True)
    assert len(accounts) >= 5, f"expected several ticks in 0.2 s at 10 ms, got {len(accounts)}"
    assert {p.symbol for p in positions} == {"BTCUSDT", "ADAUSDT"}
    assert len(positions) == 2 * len(accounts), "each step updates the account and every position"
    assert all(isinstance(r, ExchangeUnavailable) for r in results), (
        f"closing ends the streams, got {results}"
    )
    count = len(accounts)
    await asyncio.sleep(0.05)
    assert len(accounts) == count, "no update after close"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"interval": 0}, "interval must be > 0 s"),
        ({"symbols": ()}, "at least one instrument"),
        ({"symbols": ("BTCUSDT", "BTCUSDT")}, "must be distinct"),
        ({"symbols": ("btc",)}, "not a valid instrument name"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        SimExchange(**options)  # type: ignore[arg-type]
