"""market_maker: follows the account and positions through the exchange connector and logs every
update as a JSON line (`python -m implementation.market_maker --config FILE.yaml`)."""
