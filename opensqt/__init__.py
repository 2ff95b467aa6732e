"""The exchange contract's Python code, owned by neither the harness nor the implementation.

`opensqt.exchange.v1` is generated from proto/opensqt/exchange/v1/exchange.proto by
`python tools/gen_proto.py` (never edited by hand; a test fails when it is stale).
"""
