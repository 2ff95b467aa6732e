"""live_server: the account and positions over HTTP, a WebSocket feed and a live dashboard, fed by
the exchange connector (`python -m implementation.live_server --config FILE.yaml`)."""

import os

# gRPC's C core logs connection events (a server's GOAWAY on restart...) as plain text on stderr;
# the program reports those itself, as JSON. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
