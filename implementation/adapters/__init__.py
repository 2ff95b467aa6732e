"""The Exchange interface the connector needs from its one exchange, and its adapters: `sim` (an
embedded simulated exchange), `mock` (the spec's controllable MockExchange, §4.3) and `grpc`
(another ExchangeService at an address, reached through the client library)."""
