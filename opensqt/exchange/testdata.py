"""The spec's §8 test data: one account (§8.1) and two positions (§8.2), as contract messages.

Shared by the conformance harness, the reference implementation and the tests; each call returns
fresh messages, so a caller may change what it got.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from opensqt.exchange.v1 import exchange_pb2 as pb

# fmt: off
SPEC_ACCOUNT = {
    "total_balance": "10000.00", "available_balance": "5000.00", "equity": "9500.00", "unrealized_pnl": "-500.00",
    "margin_used": "5000.00", "margin_level": "190.00", "leverage": "10.0",
}
SPEC_POSITIONS = (
    {"symbol": "BTCUSDT", "side": "LONG", "size": "0.5", "entry_price": "40000.00", "mark_price": "41000.00",
     "leverage": "10", "unrealized_pnl": "500.00", "liquidation": "36000.00", "margin_type": "ISOLATED"},
    {"symbol": "ETHUSDT", "side": "SHORT", "size": "10.0", "entry_price": "3000.00", "mark_price": "2900.00",
     "leverage": "5", "unrealized_pnl": "1000.00", "liquidation": "3500.00", "margin_type": "CROSS"},
)
# fmt: on


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def spec_account(**overrides: str) -> pb.Account:
    """The account of §8.1 stamped now; keyword arguments replace its decimal fields."""
    fields = dict(SPEC_ACCOUNT)
    fields.update(overrides)
    return pb.Account(**fields, updated_at=now())


def spec_positions() -> list[pb.Position]:
    """The two positions of §8.2 (BTCUSDT long, ETHUSDT short)."""
    return [pb.Position(**fields) for fields in SPEC_POSITIONS]
