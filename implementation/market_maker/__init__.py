"""market_maker: follows the account and positions through the exchange connector and logs every
update as a JSON line (`python -m implementation.market_maker --config FILE.yaml`)."""

import os

# gRPC's C core logs connection events (a server's GOAWAY on restart...) as plain text on stderr;
# the program reports those itself, as JSON. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
