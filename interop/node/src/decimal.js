'use strict';
// The contract's money check: decimal strings only, never a float rendering (exchange.proto).

const DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/;
const SYMBOL = /^[A-Z0-9]{1,32}$/;

const ACCOUNT_MONEY = [
  'total_balance',
  'available_balance',
  'equity',
  'unrealized_pnl',
  'margin_used',
  'margin_level',
  'leverage',
];
const POSITION_MONEY = ['size', 'entry_price', 'mark_price', 'leverage', 'unrealized_pnl', 'liquidation'];

// The first field of `message` that is not a decimal string, as {field, value}, or null.
function firstBadDecimal(message, fields) {
  for (const field of fields) {
    const value = message[field];
    if (typeof value !== 'string' || !DECIMAL.test(value)) return { field, value: String(value) };
  }
  return null;
}

module.exports = {
  SYMBOL,
  validSymbol: (symbol) => symbol === '' || SYMBOL.test(symbol),
  badAccountField: (account) => firstBadDecimal(account, ACCOUNT_MONEY),
  badPositionField: (position) => firstBadDecimal(position, POSITION_MONEY),
};
