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
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from implementation.client_driver import __main__ as driver_main
from implementation.client_library import remote_exchange
from implementation.client_library.remote_exchange import RemoteExchange
from implementation.client_library.resilient_stream import StreamBreak, StreamHandle
from implementation.contract.validation import validate_account, validate_position
from opensqt.exchange.v1 import exchange_pb2 as pb
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


# ---------------------------------------------------------------------------------------------- errors


@fault("rpc-codes-as-unavailable")
def rpc_codes_as_unavailable() -> None:
    """A failed unary call is reported as UNAVAILABLE whatever status the server gave (but a
    deadline): the library takes every failure for "the server is down"."""

    def as_unavailable(method: str, exc: grpc.aio.AioRpcError) -> remote_exchange.RemoteError:
        code = exc.code()
        if code != grpc.StatusCode.DEADLINE_EXCEEDED:
            code = grpc.StatusCode.UNAVAILABLE
        return remote_exchange.remote_error(method, code, exc.details() or "")

    remote_exchange._from_rpc_error = as_unavailable


@fault("details-debug-string")
def details_debug_string() -> None:
    """A failed unary call keeps gRPC's debug string (peer, status, message, time) as its details
    instead of the server's message."""

    def with_debug_string(method: str, exc: grpc.aio.AioRpcError) -> remote_exchange.RemoteError:
        return remote_exchange.remote_error(method, exc.code(), exc.debug_error_string() or "")

    remote_exchange._from_rpc_error = with_debug_string


@fault("cancel-as-rpc-error")
def cancel_as_rpc_error() -> None:
    """A cancelled get_account raises the library's RemoteError with code CANCELLED, like any failed
    RPC, instead of letting the cancellation through (the RPC itself is cancelled all the same)."""
    get_account = RemoteExchange.get_account

    async def converted(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        try:
            return await get_account(self, timeout=timeout)
        except asyncio.CancelledError:
            raise remote_exchange.RemoteError(
                "GetAccount", grpc.StatusCode.CANCELLED, "the call was cancelled"
            ) from None

    RemoteExchange.get_account = converted  # type: ignore[method-assign]


@fault("shielded-call")
def shielded_call() -> None:
    """get_account shields its RPC from the caller's cancellation (so a cancelled caller cannot
    leave a call half done): the caller is released at once, the RPC runs on until its deadline."""

    async def shielded(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        stub = self._service()
        call = stub.GetAccount(
            pb.GetAccountRequest(), timeout=self._deadline(timeout), metadata=self._metadata
        )
        try:
            account = await asyncio.shield(asyncio.ensure_future(call))
        except grpc.aio.AioRpcError as exc:
            raise remote_exchange._from_rpc_error("GetAccount", exc) from exc
        return self._checked("GetAccount", validate_account, account)

    RemoteExchange.get_account = shielded  # type: ignore[method-assign]


DEADLINE_MARGIN_S = 0.1  # deadline-margin: taken off every call's deadline


@fault("deadline-margin")
def deadline_margin() -> None:
    """Every call's deadline is shortened by DEADLINE_MARGIN_S, "to leave room for the network", so
    a call gives up before the deadline it was given."""
    deadline = RemoteExchange._deadline

    def shortened(self: RemoteExchange, timeout: float | None) -> float | None:
        given = deadline(self, timeout)
        return None if given is None else max(given - DEADLINE_MARGIN_S, 0.001)

    RemoteExchange._deadline = shortened  # type: ignore[method-assign]


@fault("positions-symbol-dropped")
def positions_symbol_dropped() -> None:
    """get_positions checks its symbol but sends the request without it: the server answers every
    position."""

    async def unfiltered(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        stub = self._service(symbol)
        try:
            response = await stub.GetPositions(
                pb.GetPositionsRequest(), timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise remote_exchange._from_rpc_error("GetPositions", exc) from exc
        return [self._checked("GetPositions", validate_position, p) for p in response.positions]

    RemoteExchange.get_positions = unfiltered  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- connect


@fault("client-cert-ignored")
def client_cert_ignored() -> None:
    """The client certificate and key are accepted but never put into the TLS credentials (only the
    CA is): a server that asks for a client certificate refuses the handshake."""
    init = RemoteExchange.__init__

    def without_client_cert(
        self: RemoteExchange, address: str, *, tls_cert: Any = None, tls_key: Any = None, **options: Any
    ) -> None:
        init(self, address, **options)

    RemoteExchange.__init__ = without_client_cert  # type: ignore[method-assign]


@fault("tls-flag-too-early")
def tls_flag_too_early() -> None:
    """The client's TLS flag is taken when the client is made, before its credentials are, so a TLS
    client says it is plaintext."""
    init = RemoteExchange.__init__
    flags: dict[int, bool] = {}

    def snapshot(self: RemoteExchange, address: str, **options: Any) -> None:
        flags[id(self)] = False  # the credentials are not made yet at this point
        init(self, address, **options)

    RemoteExchange.__init__ = snapshot  # type: ignore[method-assign]
    RemoteExchange.tls = property(lambda self: flags.get(id(self), False))  # type: ignore[method-assign,assignment]


@fault("tls-failure-unexplained")
def tls_failure_unexplained() -> None:
    """A connect that gives up says only that it timed out, the same words with or without TLS: not
    that the handshake failed, nor why."""

    def plain(self: RemoteExchange, last_error: str | None) -> remote_exchange.ConnectTimeout:
        message = f"could not connect to the exchange at {self.address} within {self.connect_timeout:g} s"
        return remote_exchange.ConnectTimeout(message, address=self.address, timeout=self.connect_timeout)

    RemoteExchange._connect_timeout_error = plain  # type: ignore[method-assign]


@fault("connect-fails-fast")
def connect_fails_fast() -> None:
    """connect gives up as soon as the channel's first attempt fails (TRANSIENT_FAILURE), instead
    of waiting out the connect timeout: a refused port fails at once."""

    async def ready_or_failed(channel: grpc.aio.Channel) -> bool:
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return False
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
        return True

    async def connect(self: RemoteExchange) -> None:
        channel = self._open_channel()
        try:
            ready = await asyncio.wait_for(ready_or_failed(channel), self.connect_timeout)
        except asyncio.TimeoutError:
            ready = False
        if not ready:
            raise self._connect_timeout_error(await self._last_error(channel))

    RemoteExchange.connect = connect  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- streams


@fault("subscribed-before-headers")
def subscribed_before_headers() -> None:
    """A stream counts as subscribed as soon as its call is made, before the server answered: a
    subscription the server refuses is announced all the same."""
    subscribe_once = StreamHandle._subscribe_once

    async def eager(self: StreamHandle[Any], failures: int, broken_at: float | None) -> StreamBreak:
        self._connected.set()
        return await subscribe_once(self, failures, broken_at)

    StreamHandle._subscribe_once = eager  # type: ignore[method-assign]


@fault("stream-break-details-lost")
def stream_break_details_lost() -> None:
    """A broken stream is reported with its status code only: the server's message is dropped."""
    subscribe_once = StreamHandle._subscribe_once

    async def code_only(self: StreamHandle[Any], failures: int, broken_at: float | None) -> StreamBreak:
        outcome = await subscribe_once(self, failures, broken_at)
        return StreamBreak(outcome.code, "")

    StreamHandle._subscribe_once = code_only  # type: ignore[method-assign]


@fault("cancel-only-mutes")
def cancel_only_mutes() -> None:
    """cancel() stops the callbacks at once but leaves the stream's call open: it ends only with
    the client's channel."""
    handle = StreamHandle._handle
    muted: set[int] = set()

    async def cancel(self: StreamHandle[Any]) -> None:
        muted.add(id(self))

    async def unless_muted(self: StreamHandle[Any], message: Any) -> None:
        if id(self) not in muted:
            await handle(self, message)

    StreamHandle.cancel = cancel  # type: ignore[method-assign]
    StreamHandle._handle = unless_muted  # type: ignore[method-assign]


@fault("reconnected-per-attempt")
def reconnected_per_attempt() -> None:
    """The owner is told of a resubscription as each attempt starts, not once it succeeded: one
    `reconnected` per attempt while the server is away."""
    subscribe_once = StreamHandle._subscribe_once
    reconnected = StreamHandle._reconnected

    async def announcing(self: StreamHandle[Any], failures: int, broken_at: float | None) -> StreamBreak:
        if failures:
            await reconnected(self, failures, broken_at)
        return await subscribe_once(self, 0, broken_at)

    StreamHandle._subscribe_once = announcing  # type: ignore[method-assign]


PROVEN_AFTER_S = 1.0  # reconnected-after-first-update: a quiet new subscription counts after this


@fault("reconnected-after-first-update")
def reconnected_after_first_update() -> None:
    """A resubscription is announced once it has proved itself: after its first update was
    delivered (or PROVEN_AFTER_S of quiet), so that update reaches the owner before `reconnected`."""
    handle = StreamHandle._handle
    reconnected = StreamHandle._reconnected
    pending: dict[int, tuple[int, float | None, asyncio.TimerHandle]] = {}

    def announce(stream: StreamHandle[Any]) -> None:
        entry = pending.pop(id(stream), None)
        if entry is not None:
            entry[2].cancel()
            stream._task.get_loop().create_task(reconnected(stream, entry[0], entry[1]))

    async def defer(self: StreamHandle[Any], failures: int, broken_at: float | None) -> None:
        timer = asyncio.get_running_loop().call_later(PROVEN_AFTER_S, announce, self)
        pending[id(self)] = (failures, broken_at, timer)

    async def then_announce(self: StreamHandle[Any], message: Any) -> None:
        await handle(self, message)
        entry = pending.pop(id(self), None)
        if entry is not None:
            entry[2].cancel()
            await reconnected(self, entry[0], entry[1])

    StreamHandle._reconnected = defer  # type: ignore[method-assign]
    StreamHandle._handle = then_announce  # type: ignore[method-assign]


@fault("position-callback-per-method")
def position_callback_per_method() -> None:
    """Position callbacks are kept in one slot per client, as an event emitter's `on("position")`:
    a second subscribe_positions takes over the first one's updates too."""
    start = RemoteExchange.start_position_stream
    slots: dict[int, Callable[[Any], object]] = {}

    def one_slot(
        self: RemoteExchange,
        symbol: str = "",
        callback: Callable[[Any], object] | None = None,
        *,
        on_reconnect: Callable[[], object] | None = None,
    ) -> StreamHandle[Any]:
        if callback is None:
            return start(self, symbol, None, on_reconnect=on_reconnect)
        slots[id(self)] = callback
        return start(self, symbol, lambda message: slots[id(self)](message), on_reconnect=on_reconnect)

    RemoteExchange.start_position_stream = one_slot  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    if fault.apply_from(sys.argv[1:] if argv is None else argv) is None:
        return 2
    return driver_main.main()


__all__ = ["FAULTS", "main"]

if __name__ == "__main__":
    sys.exit(main())
