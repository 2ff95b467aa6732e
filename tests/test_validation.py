"""The contract's value rules: decimal strings, symbols, sides and margin types."""

from __future__ import annotations

import re

import pytest

from implementation.contract.errors import InvalidData, InvalidRequest
from implementation.contract.validation import check_symbol, is_decimal, validate_account, validate_position
from opensqt.exchange.testdata import spec_account, spec_positions


@pytest.mark.parametrize("value", ["0", "10000.00", "-500.00", "0.5", "123456789012345678901234567890.50"])
def test_decimal_strings_are_accepted(value: str) -> None:
    assert is_decimal(value)
    assert validate_account(spec_account(equity=value)).equity == value


@pytest.mark.parametrize(
    "value", ["", "1e-05", "NaN", "inf", "1.", ".5", "+1", "1,000.00", " 1", "1 ", "1.0\n", "0x10"]
)
def test_malformed_decimals_are_rejected_naming_the_field(value: str) -> None:
    assert not is_decimal(value)
    with pytest.raises(InvalidData, match=re.escape(f"account field equity has value {value!r}")):
        validate_account(spec_account(equity=value))
    position = spec_positions()[0]
    position.mark_price = value
    with pytest.raises(
        InvalidData, match=re.escape(f"position BTCUSDT field mark_price has value {value!r}")
    ):
        validate_position(position)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("symbol", "btcusdt", "field symbol has value 'btcusdt'"),
        ("symbol", "BTCUSDT\n", "field symbol has value 'BTCUSDT\\\\n'"),
        ("side", "BUY", "field side has value 'BUY': not LONG or SHORT"),
        ("margin_type", "PORTFOLIO", "field margin_type has value 'PORTFOLIO'"),
    ],
)
def test_malformed_positions_are_rejected(field: str, value: str, message: str) -> None:
    position = spec_positions()[0]
    setattr(position, field, value)
    with pytest.raises(InvalidData, match=message):
        validate_position(position)


def test_an_account_without_a_timestamp_is_rejected() -> None:
    account = spec_account()
    account.ClearField("updated_at")
    with pytest.raises(InvalidData, match="updated_at is missing"):
        validate_account(account)


@pytest.mark.parametrize("symbol", ["", "BTCUSDT", "ETH2USDT", "A" * 32])
def test_plausible_symbols_pass(symbol: str) -> None:
    assert check_symbol(symbol) == symbol


@pytest.mark.parametrize("symbol", ["btcusdt", "BTC-USDT", "A" * 33, "BTC USDT", "BTCUSDT\n", "Ω"])
def test_implausible_symbols_are_invalid_requests(symbol: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a valid instrument name"):
        check_symbol(symbol)
