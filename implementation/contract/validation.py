"""Validation of the contract's values: decimal strings, symbols, sides and margin types.

Money travels as decimal strings; a value that is not one (a float rendering such as "1e-05",
"NaN", an empty string) is rejected, never forwarded.
"""

from __future__ import annotations

import re
from operator import attrgetter

from implementation.contract.errors import InvalidData, InvalidRequest
from opensqt.exchange.v1 import exchange_pb2 as pb

DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # used with fullmatch: no trailing newline slips through
SYMBOL = re.compile(r"[A-Z0-9]{1,32}")  # used with fullmatch
MAX_SYMBOL_LENGTH = 32
ACCOUNT_DECIMALS = (
    "total_balance",
    "available_balance",
    "equity",
    "unrealized_pnl",
    "margin_used",
    "margin_level",
    "leverage",
)
POSITION_DECIMALS = ("size", "entry_price", "mark_price", "leverage", "unrealized_pnl", "liquidation")
SIDES = frozenset({"LONG", "SHORT"})
MARGIN_TYPES = frozenset({"ISOLATED", "CROSS"})


# The hot path: every field of a message checked by ONE match of one compiled pattern, over the
# fields joined by spaces (a space is never part of a decimal, so each field is matched on its own).
# It accepts exactly what DECIMAL accepts field by field. Only a message it rejects is checked field by field, which
# finds the first bad field and words the error exactly as before.
def _all_decimals(count: int) -> re.Pattern[str]:
    field = r"-?[0-9]+(?:\.[0-9]+)?"
    return re.compile(field + rf"(?: {field}){{{count - 1}}}")


_ACCOUNT_FIELDS = attrgetter(*ACCOUNT_DECIMALS)
_POSITION_FIELDS = attrgetter(*POSITION_DECIMALS)
_ACCOUNT_DECIMALS_OK = _all_decimals(len(ACCOUNT_DECIMALS)).fullmatch
_POSITION_DECIMALS_OK = _all_decimals(len(POSITION_DECIMALS)).fullmatch


def is_decimal(value: str) -> bool:
    return DECIMAL.fullmatch(value) is not None


def check_symbol(symbol: str) -> str:
    """The symbol if it is empty (all symbols) or a plausible instrument name; else InvalidRequest."""
    if symbol and not SYMBOL.fullmatch(symbol):
        shown = symbol if len(symbol) <= 40 else symbol[:40] + "..."
        raise InvalidRequest(
            f"symbol {shown!r} is not a valid instrument name "
            f"(expected 1-{MAX_SYMBOL_LENGTH} upper-case letters and digits, e.g. 'BTCUSDT', or empty for all)"
        )
    return symbol


def validate_account(account: pb.Account) -> pb.Account:
    """The account unchanged if every field is well formed; else InvalidData naming the field."""
    if _ACCOUNT_DECIMALS_OK(" ".join(_ACCOUNT_FIELDS(account))) and account.HasField("updated_at"):
        return account
    for name in ACCOUNT_DECIMALS:
        value = getattr(account, name)
        if not is_decimal(value):
            raise InvalidData(f"account field {name} has value {value!r}: not a decimal string")
    if not account.HasField("updated_at"):
        raise InvalidData("account field updated_at is missing")
    return account


def validate_position(position: pb.Position) -> pb.Position:
    """The position unchanged if every field is well formed; else InvalidData naming the field."""
    if (
        SYMBOL.fullmatch(position.symbol)
        and position.side in SIDES
        and position.margin_type in MARGIN_TYPES
        and _POSITION_DECIMALS_OK(" ".join(_POSITION_FIELDS(position)))
    ):
        return position
    if not SYMBOL.fullmatch(position.symbol):
        raise InvalidData(f"position field symbol has value {position.symbol!r}: not an instrument name")
    if position.side not in SIDES:
        raise InvalidData(
            f"position {position.symbol} field side has value {position.side!r}: not LONG or SHORT"
        )
    if position.margin_type not in MARGIN_TYPES:
        raise InvalidData(
            f"position {position.symbol} field margin_type has value {position.margin_type!r}: not ISOLATED or CROSS"
        )
    for name in POSITION_DECIMALS:
        value = getattr(position, name)
        if not is_decimal(value):
            raise InvalidData(
                f"position {position.symbol} field {name} has value {value!r}: not a decimal string"
            )
    return position
