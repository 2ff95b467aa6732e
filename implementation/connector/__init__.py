"""exchange_connector: holds the one connection to the exchange and serves it to many clients
over gRPC (`python -m implementation.connector serve|health`)."""
