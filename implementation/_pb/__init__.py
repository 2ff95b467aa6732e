"""Generated protobuf/gRPC code of the contract (proto/opensqt/exchange/v1/exchange.proto).

The generated modules import each other as top-level `opensqt.exchange.v1`, the proto package,
so this folder is put on sys.path once; everything else imports from here. Regenerate with
`python tools/gen_proto.py` (a test fails when the committed code is stale).
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

from opensqt.exchange.v1 import exchange_pb2, exchange_pb2_grpc  # noqa: E402

__all__ = ["exchange_pb2", "exchange_pb2_grpc"]
