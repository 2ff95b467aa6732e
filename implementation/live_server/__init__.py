"""live_server: the account and positions over HTTP, a WebSocket feed and a live dashboard, fed by
the exchange connector (`python -m implementation.live_server --config FILE.yaml`)."""
