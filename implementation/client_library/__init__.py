"""The client library (what market_maker and live_server use): RemoteExchange, its resilient
streams and the addresses it dials. It never imports the connector core."""
