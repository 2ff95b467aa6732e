"""The spec's §8 test data: one account and two positions."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from implementation._pb import exchange_pb2 as pb


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def test_account(**overrides: str) -> pb.Account:
    fields = {
        "total_balance": "10000.00",
        "available_balance": "5000.00",
        "equity": "9500.00",
        "unrealized_pnl": "-500.00",
        "margin_used": "5000.00",
        "margin_level": "190.00",
        "leverage": "10.0",
    }
    fields.update(overrides)
    return pb.Account(**fields, updated_at=now())


def test_positions() -> list[pb.Position]:
    return [
        pb.Position(
            symbol="BTCUSDT",
            side="LONG",
            size="0.5",
            entry_price="40000.00",
            mark_price="41000.00",
            leverage="10",
            unrealized_pnl="500.00",
            liquidation="36000.00",
            margin_type="ISOLATED",
        ),
        pb.Position(
            symbol="ETHUSDT",
            side="SHORT",
            size="10.0",
            entry_price="3000.00",
            mark_price="2900.00",
            leverage="5",
            unrealized_pnl="1000.00",
            liquidation="3500.00",
            margin_type="CROSS",
        ),
    ]
