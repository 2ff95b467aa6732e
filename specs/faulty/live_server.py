"""A deliberately faulty live_server: the reference program with ONE fault patched in.

    python -m specs.faulty.live_server --fault NAME --config FILE ...

Everything after the fault's name is the reference live_server's command line. As with the faulty
connectors (connector.py), the fault is a small change to the reference's classes and functions,
made in this process before the reference's main() runs; faults.yaml says which scenarios catch it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from implementation.live_server import __main__ as live_server_main
from implementation.live_server import access, app, guard
from implementation.state import LiveState
from specs.faulty.registry import FaultRegistry

fault = FaultRegistry("specs.faulty.live_server", "FLAGS...")
FAULTS = fault.faults


@fault("no-header-timeout")
def no_header_timeout() -> None:
    """A connection whose request head never ends is held for ever (slowloris)."""
    make = guard.guarded_protocol

    def guarded_protocol(limits: guard.ConnectionGuard) -> type[H11Protocol]:
        protocol = make(limits)
        protocol._start_head_timer = lambda self: None  # type: ignore[attr-defined]
        return protocol

    guard.guarded_protocol = guarded_protocol


@fault("no-connection-limit")
def no_connection_limit() -> None:
    """Connections are never limited: no 503, no room made, no connection_limit line."""
    init = guard.ConnectionGuard.__init__

    def unlimited(self: guard.ConnectionGuard, header_timeout_s: float, max_connections: int) -> None:
        init(self, header_timeout_s, 10**9)

    guard.ConnectionGuard.__init__ = unlimited  # type: ignore[method-assign]


@fault("no-origin-check")
def no_origin_check() -> None:
    """/ws accepts a handshake from any Origin (any web page can read the account)."""
    access.AccessPolicy.allows_origin = lambda self, origin: True  # type: ignore[method-assign]


@fault("no-host-check")
def no_host_check() -> None:
    """Any Host header is served (DNS rebinding reads the balances)."""
    access.AccessPolicy.allows_host = lambda self, host_header: True  # type: ignore[method-assign]


@fault("stale-api")
def stale_api() -> None:
    """/api/account and /api/positions keep answering 200 with the last data after the connector is lost."""
    unavailable = app._unavailable

    def only_when_empty(state: LiveState) -> JSONResponse | None:
        return unavailable(state) if not state.has_data else None

    app._unavailable = only_when_empty


def main(argv: Sequence[str] | None = None) -> int:
    rest = fault.apply_from(sys.argv[1:] if argv is None else argv)
    if rest is None:
        return 2
    return live_server_main.main(rest)


__all__ = ["FAULTS", "main"]

if __name__ == "__main__":
    sys.exit(main())
