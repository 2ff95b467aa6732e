"""A deliberately faulty client driver: the reference driver with ONE fault patched into its library.

    python -m specs.faulty.driver --fault NAME

The fault is a small change to the reference client library (RemoteExchange and its StreamHandle),
made in this process before the reference driver's main() runs, so the driver differs from the
reference in that one behaviour only. specs/faulty/faults.yaml says what each fault breaks and
which scenarios catch it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from implementation.client_driver import __main__ as driver_main
from implementation.client_library import remote_exchange
from implementation.client_library.remote_exchange import RemoteExchange
from implementation.client_library.resilient_stream import StreamHandle
from specs.faulty.registry import FaultRegistry

LATE_CANCEL_S = 0.3  # callback-after-cancel: the stream goes on this long after cancel() returned
REORDER_FLUSH_S = 0.2  # reorder-updates: a held update with no successor goes out after this long

fault = FaultRegistry("specs.faulty.driver", "", takes_arguments=False)
FAULTS = fault.faults


@fault("no-reconnection")
def no_reconnection() -> None:
    """A broken stream reports its error once and is never subscribed again."""

    async def run_once(self: StreamHandle[Any]) -> None:
        outcome = await self._subscribe_once(0, None)
        if not self._stopping:
            self._connected.clear()
            self.errors += 1
            self._log(
                logging.WARNING,
                "stream_broken",
                attempt=1,
                backoff_s=0.0,
                up_s=0.0,
                code=outcome.code.name,
                details=outcome.details,
            )

    StreamHandle._run = run_once  # type: ignore[method-assign]


@fault("callback-after-cancel")
def callback_after_cancel() -> None:
    """cancel() returns at once; the stream keeps delivering for LATE_CANCEL_S before it really stops."""

    async def cancel(self: StreamHandle[Any]) -> None:
        if not self._task.done():
            asyncio.get_running_loop().call_later(LATE_CANCEL_S, self._task.cancel)

    StreamHandle.cancel = cancel  # type: ignore[method-assign]


@fault("deadline-ignored")
def deadline_ignored() -> None:
    """Unary calls go out with no deadline at all, whatever the call or the client asked for."""

    def no_deadline(self: RemoteExchange, timeout: float | None) -> float | None:
        return None

    RemoteExchange._deadline = no_deadline  # type: ignore[method-assign]


@fault("connect-timeout-hangs")
def connect_timeout_hangs() -> None:
    """connect() waits for the channel with no timeout: an unreachable address hangs it forever."""

    async def connect(self: RemoteExchange) -> None:
        await self._open_channel().channel_ready()

    RemoteExchange.connect = connect  # type: ignore[method-assign]


@fault("reorder-updates")
def reorder_updates() -> None:
    """Stream updates reach the callback in swapped pairs: 2, 1, 4, 3, ... (a lone one after a pause)."""
    handle = StreamHandle._handle
    held: dict[int, tuple[Any, asyncio.TimerHandle]] = {}

    def flush(stream: StreamHandle[Any]) -> None:
        entry = held.pop(id(stream), None)
        if entry is not None:
            stream._task.get_loop().create_task(handle(stream, entry[0]))

    async def swapped(self: StreamHandle[Any], message: Any) -> None:
        entry = held.pop(id(self), None)
        if entry is None:
            timer = asyncio.get_running_loop().call_later(REORDER_FLUSH_S, flush, self)
            held[id(self)] = (message, timer)
            return
        earlier, timer = entry
        timer.cancel()
        await handle(self, message)
        await handle(self, earlier)

    StreamHandle._handle = swapped  # type: ignore[method-assign]


@fault("empty-address-accepted")
def empty_address_accepted() -> None:
    """An empty or blank address is taken as it is, instead of being refused at once."""
    check = remote_exchange.check_address

    def lenient(address: str) -> str:
        return address if not address.strip() else check(address)

    remote_exchange.check_address = lenient


def main(argv: Sequence[str] | None = None) -> int:
    if fault.apply_from(sys.argv[1:] if argv is None else argv) is None:
        return 2
    return driver_main.main()


__all__ = ["FAULTS", "main"]

if __name__ == "__main__":
    sys.exit(main())
