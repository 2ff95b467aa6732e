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
import time
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


LOSE_EVERY = 10  # lose-every-10th: the 10th, 20th, ... update of each stream is lost
ACCOUNT_CACHE_S = 5.0  # cache-get-account: how long one answer is served again
REPLAY_AFTER_S = 0.3  # duplicate-last-update: the last update comes again after this much quiet


@fault("lose-every-10th")
def lose_every_10th() -> None:
    """Every LOSE_EVERY-th update of a stream never reaches the callback (an off-by-one in a batch)."""
    handle = StreamHandle._handle
    counts: dict[int, int] = {}

    async def lossy(self: StreamHandle[Any], message: Any) -> None:
        counts[id(self)] = counts.get(id(self), 0) + 1
        if counts[id(self)] % LOSE_EVERY != 0:
            await handle(self, message)

    StreamHandle._handle = lossy  # type: ignore[method-assign]


@fault("cache-get-account")
def cache_get_account() -> None:
    """get_account answers from a cache for ACCOUNT_CACHE_S after each call that reached the server."""
    get_account = RemoteExchange.get_account
    cached: list[tuple[float, Any]] = []

    async def from_cache(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        now = time.monotonic()
        if cached and now - cached[0][0] < ACCOUNT_CACHE_S:
            return cached[0][1]
        answer = await get_account(self, timeout=timeout)
        cached[:] = [(now, answer)]
        return answer

    RemoteExchange.get_account = from_cache  # type: ignore[method-assign]


@fault("duplicate-last-update")
def duplicate_last_update() -> None:
    """When a stream goes quiet for REPLAY_AFTER_S, its last update reaches the callback again (a
    "latest value" refresh that replays instead of waiting)."""
    handle = StreamHandle._handle
    timers: dict[int, asyncio.TimerHandle] = {}

    async def replaying(self: StreamHandle[Any], message: Any) -> None:
        pending = timers.pop(id(self), None)
        if pending is not None:
            pending.cancel()
        await handle(self, message)
        loop = asyncio.get_running_loop()
        timers[id(self)] = loop.call_later(
            REPLAY_AFTER_S, lambda: self._task.get_loop().create_task(handle(self, message))
        )

    StreamHandle._handle = replaying  # type: ignore[method-assign]


@fault("lose-first-after-reconnect")
def lose_first_after_reconnect() -> None:
    """After a resubscription the first update of the new subscription is taken for a replay of the
    last one seen and skipped."""
    handle = StreamHandle._handle
    reconnected = StreamHandle._reconnected
    skipping: set[int] = set()

    async def mark(self: StreamHandle[Any], failures: int, broken_at: float | None) -> None:
        skipping.add(id(self))
        await reconnected(self, failures, broken_at)

    async def skip_first(self: StreamHandle[Any], message: Any) -> None:
        if id(self) in skipping:
            skipping.discard(id(self))
            return
        await handle(self, message)

    StreamHandle._reconnected = mark  # type: ignore[method-assign]
    StreamHandle._handle = skip_first  # type: ignore[method-assign]


@fault("replay-after-reconnect")
def replay_after_reconnect() -> None:
    """After a resubscription the library hands the callback the last update from before the break
    again, as a "resync", before the new subscription's own updates."""
    handle = StreamHandle._handle
    reconnected = StreamHandle._reconnected
    last: dict[int, Any] = {}

    async def remember(self: StreamHandle[Any], message: Any) -> None:
        last[id(self)] = message
        await handle(self, message)

    async def resync(self: StreamHandle[Any], failures: int, broken_at: float | None) -> None:
        await reconnected(self, failures, broken_at)
        if id(self) in last:
            await handle(self, last[id(self)])

    StreamHandle._handle = remember  # type: ignore[method-assign]
    StreamHandle._reconnected = resync  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    if fault.apply_from(sys.argv[1:] if argv is None else argv) is None:
        return 2
    return driver_main.main()


__all__ = ["FAULTS", "main"]

if __name__ == "__main__":
    sys.exit(main())
