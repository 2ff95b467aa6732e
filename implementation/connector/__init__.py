"""exchange_connector: holds the one connection to the exchange and serves it to many clients
over gRPC (`python -m implementation.connector serve|health`)."""

import os

# The log on stderr is JSON lines only: gRPC's C core would print its own lines there (a failed
# bind, every failed TLS handshake of a stray client). Failures that matter reach our own log;
# set GRPC_VERBOSITY=ERROR (or DEBUG) to see the core's lines when debugging.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
