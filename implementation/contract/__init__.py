"""Helpers of the contract that the connector core and the client library both use, and that belong to
neither: validation of decimal strings and symbols, the errors the server maps to gRPC status
codes, TLS settings, the reconnect backoff policy."""
