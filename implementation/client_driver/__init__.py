"""The reference client library (RemoteExchange) behind the client-driver protocol.

    python -m implementation.client_driver

Commands arrive as JSON lines on stdin, events leave as JSON lines on stdout, the library's log
goes to stderr; docs/client-driver.md is the protocol. The suite drives every client library
through this protocol, the reference included.
"""
