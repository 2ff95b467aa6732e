"""A deliberately faulty client driver: the reference driver with ONE fault patched into its library.

    python -m specs.faulty.driver --fault NAME

The fault is a small change to the reference client library (RemoteExchange and its StreamHandle),
made in this process before the reference driver's main() runs, so the driver differs from the
reference in that one behaviour only. specs/faulty/faults.yaml says what each fault breaks and
which scenarios catch it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from implementation.client_driver import __main__ as driver_main
from implementation.client_driver import session as driver_session
from implementation.client_driver.events import Emitter, now_ms
from implementation.client_driver.session import BadCommand, Driver, StreamEvents
from implementation.client_library import address as client_address
from implementation.client_library import remote_exchange
from implementation.client_library.remote_exchange import ConnectTimeout, RemoteExchange
from implementation.client_library.resilient_stream import StreamBreak, StreamHandle
from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import InvalidData
from implementation.contract.validation import check_symbol, validate_account, validate_position
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc
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


# ---------------------------------------------------------------------------------------------- the driver's protocol


async def _serve(
    emitter: Emitter,
    *,
    answer_bad_lines: bool = True,
    stop_at_bad_line: bool = False,
    one_at_a_time: bool = False,
    await_streams_at_end: bool = False,
) -> None:
    """The reference driver's serve() with one of its habits changed (each keyword says which)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=driver_main.LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver(emitter)
    emitter.emit("ready", protocol=driver_main.PROTOCOL_VERSION, library="RemoteExchange (faulty)")
    running: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
        except ValueError as exc:
            if answer_bad_lines:
                emitter.emit(
                    "error",
                    kind="bad_command",
                    code="",
                    details="",
                    message=f"not a command: {exc}",
                    took_ms=0.0,
                )
            if stop_at_bad_line:
                break
            continue
        task = loop.create_task(driver.handle(command))
        running.add(task)
        task.add_done_callback(running.discard)
        if one_at_a_time:  # the command and the work it started, before the next line is read
            await task
            await asyncio.gather(*list(driver._calls.values()), return_exceptions=True)
    await asyncio.gather(*running, return_exceptions=True)
    if await_streams_at_end:  # "let the streams finish": a subscription never does by itself
        await asyncio.gather(*(handle._task for handle in driver._streams.values()), return_exceptions=True)
    await driver.shutdown()


def _serving(**habits: bool) -> None:
    async def serve(emitter: Emitter) -> None:
        await _serve(emitter, **habits)

    driver_main.serve = serve


@fault("log-event-before-ready")
def log_event_before_ready() -> None:
    """The driver reports its log as `log` events on stdout, and logs that it starts before its
    `ready` line."""

    class Announcing(Emitter):
        def emit(self, event: str, command_id: str | None = None, **fields: Any) -> None:
            if event == "ready":
                super().emit("log", level="info", message="client driver starting")
            super().emit(event, command_id, **fields)

    driver_main.Emitter = Announcing  # type: ignore[attr-defined]


WARM_UP_S = 20.0  # ready-after-warm-up: how long the driver waits for the default address


@fault("ready-after-warm-up")
def ready_after_warm_up() -> None:
    """Before its `ready` line the driver checks that the library can reach the default exchange
    address (127.0.0.1:50051), waiting up to WARM_UP_S for it."""

    class WarmingUp(Emitter):
        def emit(self, event: str, command_id: str | None = None, **fields: Any) -> None:
            if event == "ready":
                with grpc.insecure_channel("127.0.0.1:50051") as channel:
                    try:
                        grpc.channel_ready_future(channel).result(timeout=WARM_UP_S)
                    except grpc.FutureTimeoutError:
                        pass
            super().emit(event, command_id, **fields)

    driver_main.Emitter = WarmingUp  # type: ignore[attr-defined]


@fault("t-ms-as-string")
def t_ms_as_string() -> None:
    """t_ms is written as a string with three decimals ("41.337"), not a number."""

    class Formatted(Emitter):
        def emit(self, event: str, command_id: str | None = None, **fields: Any) -> None:
            record: dict[str, Any] = {"event": event, "t_ms": f"{now_ms():.3f}"}
            if command_id is not None:
                record["id"] = command_id
            self._out.write(json.dumps({**record, **fields}) + "\n")
            self._out.flush()

    driver_main.Emitter = Formatted  # type: ignore[attr-defined]


@fault("log-lines-on-stdout")
def log_lines_on_stdout() -> None:
    """The driver's (and the library's) plain-text log goes to stdout, between the event lines."""
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


class _JsonLog(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"t_ms": now_ms(), "level": record.levelname.lower(), "message": record.getMessage()}
        )


@fault("json-log-without-event")
def json_log_without_event() -> None:
    """The library's log records go to stdout as JSON objects with `t_ms` but no `event`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonLog())
    logging.basicConfig(handlers=[handler], level=logging.INFO)


@fault("answer-stamped-with-took-ms")
def answer_stamped_with_took_ms() -> None:
    """An event that answers a command is stamped with the command's own elapsed time (its
    took_ms) as t_ms, not the driver's clock, so t_ms steps back."""

    class CommandClock(Emitter):
        def emit(self, event: str, command_id: str | None = None, **fields: Any) -> None:
            if "took_ms" not in fields:
                super().emit(event, command_id, **fields)
                return
            record: dict[str, Any] = {"event": event, "t_ms": fields["took_ms"], **fields}
            if command_id is not None:
                record["id"] = command_id
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()

    driver_main.Emitter = CommandClock  # type: ignore[attr-defined]


@fault("stream-error-without-id")
def stream_error_without_id() -> None:
    """The library's stream errors are reported as they are logged, with no stream id: the
    driver does not know which stream logged them."""

    def emit(self: StreamEvents, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) in driver_session.STREAM_ERRORS:
            self._emitter.emit(
                "stream_error",
                None,
                code=str(getattr(record, "code", "")),
                details=str(getattr(record, "details", "")),
                message=record.getMessage(),
            )

    StreamEvents.emit = emit  # type: ignore[method-assign]


@fault("commands-one-at-a-time")
def commands_one_at_a_time() -> None:
    """The driver carries out one command at a time: it reads the next line only once the work
    of the last (a call included) has ended, so a cancel waits behind the call it targets."""
    _serving(one_at_a_time=True)


@fault("unknown-command-unsupported")
def unknown_command_unsupported() -> None:
    """An unknown command is answered `unsupported` (as if the library lacked it), not `bad_command`."""
    handle = Driver.handle

    async def handled(self: Driver, command: dict[str, Any]) -> None:
        command_id = command.get("id")
        if isinstance(command_id, str) and command_id and command.get("cmd") not in KNOWN_COMMANDS:
            self._error(command_id, "unsupported", f"{command.get('cmd')!r} is not supported", now_ms())
            return
        await handle(self, command)

    Driver.handle = handled  # type: ignore[method-assign]


KNOWN_COMMANDS = frozenset(
    {"connect", "get_account", "get_positions", "subscribe_account", "subscribe_positions", "cancel", "close"}
)
CALLS = frozenset({"get_account", "get_positions", "subscribe_account", "subscribe_positions"})


@fault("call-before-connect-as-rpc")
def call_before_connect_as_rpc() -> None:
    """A call before connect is answered as a failed RPC (kind rpc, UNAVAILABLE: not connected),
    not as a command out of order."""
    handle = Driver.handle

    async def handled(self: Driver, command: dict[str, Any]) -> None:
        command_id = command.get("id")
        if self._client is None and isinstance(command_id, str) and command.get("cmd") in CALLS:
            self._error(
                command_id, "rpc", "not connected", now_ms(), code="UNAVAILABLE", details="not connected"
            )
            return
        await handle(self, command)

    Driver.handle = handled  # type: ignore[method-assign]


@fault("command-without-id-ignored")
def command_without_id_ignored() -> None:
    """A command without an id is dropped without an answer: there is no id to answer it with."""
    handle = Driver.handle

    async def handled(self: Driver, command: dict[str, Any]) -> None:
        command_id = command.get("id")
        if isinstance(command_id, str) and command_id:
            await handle(self, command)

    Driver.handle = handled  # type: ignore[method-assign]


@fault("bad-line-ignored")
def bad_line_ignored() -> None:
    """A line that is not a JSON object is skipped without an answer."""
    _serving(answer_bad_lines=False)


@fault("bad-line-ends-input")
def bad_line_ends_input() -> None:
    """A line that is not a JSON object is answered, then taken for the end of the input: the
    driver closes everything and exits."""
    _serving(stop_at_bad_line=True)


@fault("close-without-client-refused")
def close_without_client_refused() -> None:
    """`close` with no client open is refused as out of order (bad_command), not answered `closed`."""
    close = Driver._close

    async def strict(self: Driver, command_id: str | None, command: dict[str, Any], started: float) -> None:
        if command_id is not None and self._client is None:
            raise BadCommand("no client to close: send connect first")
        await close(self, command_id, command, started)

    Driver._close = strict  # type: ignore[method-assign]


@fault("camel-case-payload")
def camel_case_payload() -> None:
    """Contract messages are written with MessageToDict's defaults: lowerCamelCase JSON names
    (totalBalance), not the .proto's field names."""

    def camel(message: Message) -> dict[str, Any]:
        return json_format.MessageToDict(message)

    driver_session.payload = camel  # type: ignore[attr-defined]


MONEY_SKIPPED = frozenset({"symbol", "side", "margin_type", "updated_at"})


@fault("payload-float-decimals")
def payload_float_decimals() -> None:
    """The driver writes decimal strings through float(): "10000.00" -> "10000.0"."""
    payload = driver_session.payload  # type: ignore[attr-defined]

    def floats(message: Message) -> dict[str, Any]:
        fields = payload(message)
        return {
            key: value if key in MONEY_SKIPPED or not isinstance(value, str) else str(float(value))
            for key, value in fields.items()
        }

    driver_session.payload = floats  # type: ignore[attr-defined]


def _patch_error(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Driver._error writing its event's fields through `change`."""

    def error(
        self: Driver, command_id: str | None, kind: str, message: str, started: float, **fields: Any
    ) -> None:
        record = {
            "kind": kind,
            "code": fields.pop("code", ""),
            "details": fields.pop("details", ""),
            "message": message,
            "took_ms": round(now_ms() - started, 3),
            **fields,
        }
        self._emitter.emit("error", command_id, **change(record))

    Driver._error = error  # type: ignore[method-assign]


@fault("error-kind-as-type")
def error_kind_as_type() -> None:
    """An error's kind is written under `type`, not `kind`."""
    _patch_error(lambda r: {("type" if key == "kind" else key): value for key, value in r.items()})


@fault("error-code-numeric")
def error_code_numeric() -> None:
    """An error's gRPC code is written as its number (14), not its name (UNAVAILABLE)."""
    numbers = {code.name: code.value[0] for code in grpc.StatusCode}
    _patch_error(lambda r: {**r, "code": numbers.get(r["code"], r["code"])})


@fault("error-details-are-the-message")
def error_details_are_the_message() -> None:
    """An RPC error's details carry the library's whole message (str(exc)), not the server's details."""
    _patch_error(lambda r: {**r, "details": r["message"]} if r["details"] else r)


@fault("error-message-generic")
def error_message_generic() -> None:
    """An error's message is the driver's own summary ("connect failed: invalid_address"), not the
    library's message."""
    _patch_error(lambda r: {**r, "message": f"command failed: {r['kind']}"})


@fault("error-without-took-ms")
def error_without_took_ms() -> None:
    """An error event carries no took_ms."""
    _patch_error(lambda r: {key: value for key, value in r.items() if key != "took_ms"})


@fault("exit-code-counts-errors")
def exit_code_counts_errors() -> None:
    """The driver's exit code says whether any command failed: 1 after an `error` event."""
    errors: list[str] = []

    class Counting(Emitter):
        def emit(self, event: str, command_id: str | None = None, **fields: Any) -> None:
            if event == "error":
                errors.append(str(fields.get("kind")))
            super().emit(event, command_id, **fields)

    main = driver_main.main
    driver_main.Emitter = Counting  # type: ignore[attr-defined]
    driver_main.main = lambda: max(main(), 1 if errors else 0)


@fault("end-waits-for-streams")
def end_waits_for_streams() -> None:
    """At the end of input the driver waits for its streams to finish before closing them: an open
    subscription never does, so the driver never exits."""
    _serving(await_streams_at_end=True)


# ---------------------------------------------------------------------------------------------- the library: connect


@fault("connect-returns-before-ready")
def connect_returns_before_ready() -> None:
    """connect opens the channel and returns at once, letting it connect in the background; a
    call made while the channel is not ready yet fails fast with UNAVAILABLE."""
    get_account, get_positions = RemoteExchange.get_account, RemoteExchange.get_positions

    async def connect(self: RemoteExchange) -> None:
        self._open_channel()

    def ready_or_refused(self: RemoteExchange, method: str) -> None:
        channel = self._channel
        if channel is None or channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY:
            raise remote_exchange.remote_error(method, grpc.StatusCode.UNAVAILABLE, "not connected yet")

    async def account(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        ready_or_refused(self, "GetAccount")
        return await get_account(self, timeout=timeout)

    async def positions(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        ready_or_refused(self, "GetPositions")
        return await get_positions(self, symbol, timeout=timeout)

    RemoteExchange.connect = connect  # type: ignore[method-assign]
    RemoteExchange.get_account = account  # type: ignore[method-assign]
    RemoteExchange.get_positions = positions  # type: ignore[method-assign]


@fault("connect-waits-for-state-to-settle")
def connect_waits_for_state_to_settle() -> None:
    """connect waits, once the channel is ready, for its state to settle (no change within the
    connect timeout) before it answers: a healthy connect answers only after the whole timeout."""
    connect = RemoteExchange.connect

    async def settled(self: RemoteExchange) -> None:
        await connect(self)
        channel = self._open_channel()
        try:
            await asyncio.wait_for(
                channel.wait_for_state_change(grpc.ChannelConnectivity.READY), self.connect_timeout
            )
        except asyncio.TimeoutError:
            pass  # no change: the channel is stable

    RemoteExchange.connect = settled  # type: ignore[method-assign]


@fault("connect-refused-as-rpc-error")
def connect_refused_as_rpc_error() -> None:
    """A connect the server refused is reported as a failed RPC (kind rpc, UNAVAILABLE), once the
    connect timeout has passed, not as a connect timeout."""
    connecting = Driver._connecting

    async def refused(self: Driver, command_id: str, client: RemoteExchange, started: float) -> None:
        try:
            await client.connect()
        except ConnectTimeout as exc:
            await self._drop(client)
            if "refused" in str(exc).lower():
                self._error(command_id, "rpc", str(exc), started, code="UNAVAILABLE", details=str(exc))
            else:
                self._error(command_id, "connect_timeout", str(exc), started)
        except asyncio.CancelledError:
            await connecting(self, command_id, client, started)
        else:
            self._emitter.emit("connected", command_id, took_ms=round(now_ms() - started, 3), tls=client.tls)

    Driver._connecting = refused  # type: ignore[method-assign]


def _address_problem_unless(accepted: Callable[[str], bool]) -> None:
    """The address check passes what `accepted` holds for, and judges the rest as the reference does."""
    problem = client_address._address_problem

    def lenient(text: str) -> str | None:
        return None if accepted(text) else problem(text)

    client_address._address_problem = lenient


@fault("address-without-port-accepted")
def address_without_port_accepted() -> None:
    """An address without a port is passed to gRPC as it is, which dials its default port (443)."""
    _address_problem_unless(lambda text: ":" not in text)


@fault("port-not-a-number-accepted")
def port_not_a_number_accepted() -> None:
    """The port is checked for its range only when it is a number; any other port is passed on."""
    port_problem = client_address._port_problem

    def numbers_only(port: str) -> str | None:
        return None if port and not port.isdigit() else port_problem(port)

    client_address._port_problem = numbers_only


@fault("port-range-unchecked")
def port_range_unchecked() -> None:
    """The port is checked to be a number, not to be in 1-65535."""

    def digits(port: str) -> str | None:
        if not port:
            return "the port is missing"
        return None if port.isdigit() else f"port {port!r} is not a number"

    client_address._port_problem = digits


@fault("url-address-accepted")
def url_address_accepted() -> None:
    """An address written as a URL is read as the host and port it names (the scheme's default
    port when it has none): "http://x" dials x:80."""
    check = remote_exchange.check_address

    def from_url(address: str) -> str:
        if "://" in address:
            url = urlsplit(address.strip())
            return check(f"{url.hostname or ''}:{url.port or DEFAULT_PORTS.get(url.scheme, 80)}")
        return check(address)

    remote_exchange.check_address = from_url


DEFAULT_PORTS = {"http": 80, "https": 443}


@fault("ipv6-without-brackets-accepted")
def ipv6_without_brackets_accepted() -> None:
    """An IPv6 host is recognised whether or not it is in brackets: the last colon starts the port."""

    def unbracketed_v6(text: str) -> bool:
        host, _, port = text.rpartition(":")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return client_address._port_problem(port) is None

    _address_problem_unless(unbracketed_v6)


@fault("host-name-unchecked")
def host_name_unchecked() -> None:
    """Host names are not checked (only IPv4 addresses are): "bad host:50051" is dialled."""
    client_address.HOSTNAME_LABEL = re.compile(r"^.{1,63}$")


@fault("malformed-address-unnamed")
def malformed_address_unnamed() -> None:
    """A malformed address is refused with the reason only, not the address itself."""
    check = remote_exchange.check_address

    def unnamed(address: str) -> str:
        try:
            return check(address)
        except ValueError as exc:
            raise ValueError(str(exc).replace(f" {address!r}", "")) from None

    remote_exchange.check_address = unnamed


@fault("address-checked-after-dialling")
def address_checked_after_dialling() -> None:
    """The address is judged only once a connect to it has failed: an empty or malformed address
    is refused with the right kind, after the connect timeout."""
    check = remote_exchange.check_address
    remote_exchange.check_address = lambda address: address.strip() or address

    async def connecting(self: Driver, command_id: str, client: RemoteExchange, started: float) -> None:
        try:
            await client.connect()
        except ConnectTimeout as exc:
            await self._drop(client)
            try:
                check(client.address)
            except ValueError as bad:
                empty = str(bad).startswith("exchange address is empty")
                self._error(command_id, "empty_address" if empty else "invalid_address", str(bad), started)
                return
            self._error(command_id, "connect_timeout", str(exc), started)
        else:
            self._emitter.emit("connected", command_id, took_ms=round(now_ms() - started, 3), tls=client.tls)

    Driver._connecting = connecting  # type: ignore[method-assign]


@fault("tls-ca-path-as-pem")
def tls_ca_path_as_pem() -> None:
    """The CA option is passed to gRPC as it was given, the file's path, not the file's contents."""
    read = remote_exchange._read_pem

    def path_for_ca(option: str, path: str | Path | None) -> bytes | None:
        if option == "tls_ca" and path is not None:
            return str(path).encode()
        return read(option, path)

    remote_exchange._read_pem = path_for_ca


@fault("unary-calls-plaintext")
def unary_calls_plaintext() -> None:
    """Unary calls go through a second channel of their own, made without the client's TLS
    credentials; streams use the client's channel."""
    plain: dict[int, pb_grpc.ExchangeServiceStub] = {}

    def stub(self: RemoteExchange, symbol: str = "") -> Any:
        check_symbol(symbol)
        if id(self) not in plain:
            plain[id(self)] = pb_grpc.ExchangeServiceStub(grpc.aio.insecure_channel(self.address))
        return plain[id(self)]

    get_account, get_positions = RemoteExchange.get_account, RemoteExchange.get_positions

    async def account(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        self._service = lambda symbol="": stub(self, symbol)  # type: ignore[method-assign]
        try:
            return await get_account(self, timeout=timeout)
        finally:
            del self._service

    async def positions(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        self._service = lambda symbol="": stub(self, symbol)  # type: ignore[method-assign]
        try:
            return await get_positions(self, symbol, timeout=timeout)
        finally:
            del self._service

    RemoteExchange.get_account = account  # type: ignore[method-assign]
    RemoteExchange.get_positions = positions  # type: ignore[method-assign]


@fault("tls-failure-as-rpc-error")
def tls_failure_as_rpc_error() -> None:
    """A TLS connect that fails is reported as a failed RPC (kind rpc, UNAVAILABLE), as gRPC
    reports it to a call, not as a TLS failure or a connect timeout."""
    connecting = Driver._connecting

    async def as_rpc(self: Driver, command_id: str, client: RemoteExchange, started: float) -> None:
        if not client.tls:
            await connecting(self, command_id, client, started)
            return
        try:
            await client.connect()
        except ConnectTimeout as exc:
            await self._drop(client)
            self._error(command_id, "rpc", str(exc), started, code="UNAVAILABLE", details=str(exc))
        else:
            self._emitter.emit("connected", command_id, took_ms=round(now_ms() - started, 3), tls=client.tls)

    Driver._connecting = as_rpc  # type: ignore[method-assign]


@fault("connect-timeout-unnamed")
def connect_timeout_unnamed() -> None:
    """A connect that gives up says how long it waited, not which address it tried."""

    def unnamed(self: RemoteExchange, last_error: str | None) -> remote_exchange.ConnectTimeout:
        message = f"could not connect to the exchange within {self.connect_timeout:g} s (connect timeout)"
        return remote_exchange.ConnectTimeout(message, address=self.address, timeout=self.connect_timeout)

    RemoteExchange._connect_timeout_error = unnamed  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- the library: calls


@fault("account-field-dropped")
def account_field_dropped() -> None:
    """get_account copies the server's Account into its answer field by field, and misses margin_level."""
    get_account = RemoteExchange.get_account

    async def copied(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        account = pb.Account()
        account.CopyFrom(await get_account(self, timeout=timeout))
        account.ClearField("margin_level")
        return account

    RemoteExchange.get_account = copied  # type: ignore[method-assign]


@fault("internal-as-invalid-data")
def internal_as_invalid_data() -> None:
    """A call that fails INTERNAL is taken for a broken answer and raised as InvalidData, not as a
    failed RPC."""
    from_rpc_error = remote_exchange._from_rpc_error

    def converted(method: str, exc: grpc.aio.AioRpcError) -> Any:
        if exc.code() == grpc.StatusCode.INTERNAL:
            return InvalidData(f"{method}: the server's answer is unusable: {exc.details()}")
        return from_rpc_error(method, exc)

    remote_exchange._from_rpc_error = converted


@fault("cancel-of-call-unanswered")
def cancel_of_call_unanswered() -> None:
    """Cancelling a call is answered by the call's own `error` (kind cancelled) alone: the cancel
    command gets no `cancelled` of its own."""
    cancel = Driver._cancel

    async def quiet(self: Driver, command_id: str, command: dict[str, Any], started: float) -> None:
        target = command.get("target")
        if isinstance(target, str) and target in self._calls:
            call = self._calls[target]
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            return
        await cancel(self, command_id, command, started)

    Driver._cancel = quiet  # type: ignore[method-assign]


@fault("positions-field-dropped")
def positions_field_dropped() -> None:
    """get_positions copies each Position field by field, and misses liquidation."""
    get_positions = RemoteExchange.get_positions

    async def copied(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        answer = await get_positions(self, symbol, timeout=timeout)
        for position in answer:
            position.ClearField("liquidation")
        return answer

    RemoteExchange.get_positions = copied  # type: ignore[method-assign]


@fault("positions-filtered-by-equality")
def positions_filtered_by_equality() -> None:
    """get_positions filters the server's answer again by `symbol == requested`, so an empty
    symbol (every symbol) keeps none."""
    get_positions = RemoteExchange.get_positions

    async def filtered(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        return [p for p in await get_positions(self, symbol, timeout=timeout) if p.symbol == symbol]

    RemoteExchange.get_positions = filtered  # type: ignore[method-assign]


@fault("cache-get-positions")
def cache_get_positions() -> None:
    """get_positions answers from a cache, per symbol, for ACCOUNT_CACHE_S after each call that
    reached the server."""
    get_positions = RemoteExchange.get_positions
    cached: dict[str, tuple[float, Any]] = {}

    async def from_cache(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        now = time.monotonic()
        if symbol in cached and now - cached[symbol][0] < ACCOUNT_CACHE_S:
            return cached[symbol][1]
        answer = await get_positions(self, symbol, timeout=timeout)
        cached[symbol] = (now, answer)
        return answer

    RemoteExchange.get_positions = from_cache  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- the library: streams

QUIET_WARNING_S = 0.5  # quiet-stream-reported: a stream this long without a message is reported


@fault("quiet-stream-reported")
def quiet_stream_reported() -> None:
    """A stream watchdog reports a stream that has been quiet for QUIET_WARNING_S as broken
    (DEADLINE_EXCEEDED), while the stream stays subscribed: a quiet market looks like a failure."""
    handle = StreamHandle._handle
    timers: dict[int, asyncio.TimerHandle] = {}

    def report(stream: StreamHandle[Any]) -> None:
        if not stream._stopping:
            stream._log(
                logging.WARNING,
                "stream_broken",
                attempt=0,
                backoff_s=0.0,
                up_s=QUIET_WARNING_S,
                code=grpc.StatusCode.DEADLINE_EXCEEDED.name,
                details=f"no message for {QUIET_WARNING_S:g} s",
            )

    async def watched(self: StreamHandle[Any], message: Any) -> None:
        pending = timers.pop(id(self), None)
        if pending is not None:
            pending.cancel()
        await handle(self, message)
        timers[id(self)] = asyncio.get_running_loop().call_later(QUIET_WARNING_S, report, self)

    StreamHandle._handle = watched  # type: ignore[method-assign]


@fault("reconnected-on-first-subscribe")
def reconnected_on_first_subscribe() -> None:
    """The owner's on_reconnect hook runs on every successful subscription, the first one included
    (a "(re)connected" hook), so a healthy stream announces `reconnected`."""
    subscribe_once = StreamHandle._subscribe_once

    async def every_time(self: StreamHandle[Any], failures: int, broken_at: float | None) -> StreamBreak:
        return await subscribe_once(self, failures or 1, broken_at)

    StreamHandle._subscribe_once = every_time  # type: ignore[method-assign]


ROUTINE_STREAM_ERRORS = frozenset({"stream_broken", "stream_attempt_failed"})


@fault("unavailable-break-unreported")
def unavailable_break_unreported() -> None:
    """A stream that breaks with UNAVAILABLE (the server going away) is taken for routine: it is
    resubscribed and logged at debug level as a retry, never reported as a stream error."""
    log = StreamHandle._log

    def quiet(
        self: StreamHandle[Any], level: int, event: str, *, exc_info: bool = False, **fields: object
    ) -> None:
        if event in ROUTINE_STREAM_ERRORS and fields.get("code") == grpc.StatusCode.UNAVAILABLE.name:
            level, event = logging.DEBUG, "stream_retrying"
        log(self, level, event, exc_info=exc_info, **fields)

    StreamHandle._log = quiet  # type: ignore[method-assign]


@fault("stream-error-code-unavailable")
def stream_error_code_unavailable() -> None:
    """Every broken stream is reported as UNAVAILABLE ("the stream is gone"), whatever status the
    server ended it with; its details are kept."""
    subscribe_once = StreamHandle._subscribe_once

    async def unavailable(self: StreamHandle[Any], failures: int, broken_at: float | None) -> StreamBreak:
        outcome = await subscribe_once(self, failures, broken_at)
        return StreamBreak(grpc.StatusCode.UNAVAILABLE, outcome.details)

    StreamHandle._subscribe_once = unavailable  # type: ignore[method-assign]


@fault("break-as-empty-update")
def break_as_empty_update() -> None:
    """When a stream breaks, the callback gets an empty message as its "reset" signal."""
    subscribe_once = StreamHandle._subscribe_once
    handle = StreamHandle._handle
    kinds: dict[int, type[Any]] = {}

    async def seen(self: StreamHandle[Any], message: Any) -> None:
        kinds[id(self)] = type(message)
        await handle(self, message)

    async def signalled(self: StreamHandle[Any], failures: int, broken_at: float | None) -> StreamBreak:
        outcome = await subscribe_once(self, failures, broken_at)
        if not self._stopping and self._callback is not None and id(self) in kinds:
            await self._call_user("callback", self._callback, kinds[id(self)]())
        return outcome

    StreamHandle._handle = seen  # type: ignore[method-assign]
    StreamHandle._subscribe_once = signalled  # type: ignore[method-assign]


def _unchecked(message: Any) -> Any:
    return message


@fault("stream-unvalidated")
def stream_unvalidated() -> None:
    """Stream messages reach the callback unchecked: a money field that is not a decimal string
    is delivered."""
    init = StreamHandle.__init__

    def unchecked(self: StreamHandle[Any], name: str, open_call: Any, **options: Any) -> None:
        init(self, name, open_call, **{**options, "validate": _unchecked})

    StreamHandle.__init__ = unchecked  # type: ignore[method-assign]


@fault("stream-ends-on-invalid")
def stream_ends_on_invalid() -> None:
    """A stream message that breaks the contract ends the stream: its InvalidData escapes the
    stream's task, which is never resubscribed."""

    async def strict(self: StreamHandle[Any], message: Any) -> None:
        item = self._validate(message)
        self.delivered += 1
        self._delivered_since_connect += 1
        if self._callback is not None:
            await self._call_user("callback", self._callback, item)

    StreamHandle._handle = strict  # type: ignore[method-assign]


@fault("reconnect-hints-as-seconds")
def reconnect_hints_as_seconds() -> None:
    """The connect's reconnect hints (milliseconds) are read as seconds: a 50 ms first backoff
    becomes 50 s."""
    policy = ReconnectPolicy

    def in_seconds(*, initial_backoff: float, max_backoff: float) -> ReconnectPolicy:
        return policy(initial_backoff=initial_backoff * 1000.0, max_backoff=max_backoff * 1000.0)

    driver_session.ReconnectPolicy = in_seconds  # type: ignore[attr-defined,assignment]


@fault("circuit-open-after-stream-error")
def circuit_open_after_stream_error() -> None:
    """A circuit breaker opens when a stream breaks and closes on the next successful unary call;
    but unary calls are refused (UNAVAILABLE) while it is open, so it never closes."""
    log = StreamHandle._log
    get_account, get_positions = RemoteExchange.get_account, RemoteExchange.get_positions
    opened: list[str] = []

    def tripping(
        self: StreamHandle[Any], level: int, event: str, *, exc_info: bool = False, **fields: object
    ) -> None:
        if event in ROUTINE_STREAM_ERRORS:
            opened.append(str(fields.get("code")))
        log(self, level, event, exc_info=exc_info, **fields)

    def refuse_if_open(method: str) -> None:
        if opened:
            raise remote_exchange.remote_error(
                method, grpc.StatusCode.UNAVAILABLE, f"circuit open after a stream error ({opened[-1]})"
            )

    async def account(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        refuse_if_open("GetAccount")
        answer = await get_account(self, timeout=timeout)
        opened.clear()
        return answer

    async def positions(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        refuse_if_open("GetPositions")
        answer = await get_positions(self, symbol, timeout=timeout)
        opened.clear()
        return answer

    StreamHandle._log = tripping  # type: ignore[method-assign]
    RemoteExchange.get_account = account  # type: ignore[method-assign]
    RemoteExchange.get_positions = positions  # type: ignore[method-assign]


CANCEL_POLL_S = 1.2  # stream-cancel-polled: how often the driver looks whether a stream has ended


@fault("stream-cancel-polled")
def stream_cancel_polled() -> None:
    """Cancelling a stream stops it at once, but the driver learns that it ended by polling every
    CANCEL_POLL_S, and answers `cancelled` only then."""

    async def polled(self: Driver, stream_id: str) -> None:
        handle = self._streams.pop(stream_id)
        watcher = self._watchers.pop(stream_id, None)
        if watcher is not None:
            watcher.cancel()
        handle._stopping = True
        handle._task.cancel()
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if handle.done:
                break
        self._finished.add(stream_id)

    Driver._stop_stream = polled  # type: ignore[method-assign]


def _position_callbacks(wrap: Callable[[str, Callable[[Any], object]], Callable[[Any], object]]) -> None:
    """start_position_stream hands the library's callback through `wrap(symbol, callback)`."""
    start = RemoteExchange.start_position_stream

    def wrapped(
        self: RemoteExchange,
        symbol: str = "",
        callback: Callable[[Any], object] | None = None,
        *,
        on_reconnect: Callable[[], object] | None = None,
    ) -> StreamHandle[Any]:
        chosen = None if callback is None else wrap(symbol, callback)
        return start(self, symbol, chosen, on_reconnect=on_reconnect)

    RemoteExchange.start_position_stream = wrapped  # type: ignore[method-assign]


@fault("position-stream-field-dropped")
def position_stream_field_dropped() -> None:
    """Position updates are copied field by field on their way to the callback, and miss liquidation."""

    def copying(symbol: str, callback: Callable[[Any], object]) -> Callable[[Any], object]:
        def deliver(message: Any) -> object:
            copy = pb.Position()
            copy.CopyFrom(message)
            copy.ClearField("liquidation")
            return callback(copy)

        return deliver

    _position_callbacks(copying)


@fault("position-stream-filtered-by-equality")
def position_stream_filtered_by_equality() -> None:
    """The library filters position updates again by `symbol == subscribed`, so an empty symbol
    (every symbol) lets none through."""

    def filtering(symbol: str, callback: Callable[[Any], object]) -> Callable[[Any], object]:
        def deliver(message: Any) -> object:
            return callback(message) if message.symbol == symbol else None

        return deliver

    _position_callbacks(filtering)


@fault("empty-symbol-known-symbols-only")
def empty_symbol_known_symbols_only() -> None:
    """A subscription with an empty symbol is taken as one to the symbols the exchange holds
    positions of when it starts (learnt with get_positions): a symbol new to it never arrives."""
    start = RemoteExchange.start_position_stream

    def known_only(
        self: RemoteExchange,
        symbol: str = "",
        callback: Callable[[Any], object] | None = None,
        *,
        on_reconnect: Callable[[], object] | None = None,
    ) -> StreamHandle[Any]:
        if symbol or callback is None:
            return start(self, symbol, callback, on_reconnect=on_reconnect)
        known: set[str] = set()
        learnt = asyncio.get_running_loop().create_task(self.get_positions(""))
        learnt.add_done_callback(
            lambda t: known.update(p.symbol for p in t.result()) if not t.exception() else None
        )
        deliver = callback

        def only_known(message: Any) -> object:
            return deliver(message) if message.symbol in known else None

        return start(self, symbol, only_known, on_reconnect=on_reconnect)

    RemoteExchange.start_position_stream = known_only  # type: ignore[method-assign]


@fault("token-never-sent")
def token_never_sent() -> None:
    """The bearer token is checked and kept, but never attached to a call."""
    init = RemoteExchange.__init__

    def tokenless(self: RemoteExchange, address: str, **options: Any) -> None:
        init(self, address, **options)
        self._metadata = None

    RemoteExchange.__init__ = tokenless  # type: ignore[method-assign]


@fault("silent-peer-as-deadline-exceeded")
def silent_peer_as_deadline_exceeded() -> None:
    """A connect timeout for which gRPC gives no cause (the peer accepted the connection and never
    answered, so no connection error was seen) is reported as the handshake's deadline: kind rpc,
    code DEADLINE_EXCEEDED, not a connect timeout."""
    connecting = Driver._connecting

    async def by_cause(self: Driver, command_id: str, client: RemoteExchange, started: float) -> None:
        try:
            await client.connect()
        except ConnectTimeout as exc:
            await self._drop(client)
            if "last error" in str(exc):
                self._error(command_id, "connect_timeout", str(exc), started)
            else:
                self._error(command_id, "rpc", str(exc), started, code="DEADLINE_EXCEEDED", details=str(exc))
        except asyncio.CancelledError:
            await connecting(self, command_id, client, started)
        else:
            self._emitter.emit("connected", command_id, took_ms=round(now_ms() - started, 3), tls=client.tls)

    Driver._connecting = by_cause  # type: ignore[method-assign]


READ_RETRIES = 4  # deadline-per-attempt: a timed-out read is tried again this many times
READ_RETRY_PAUSE_S = 0.1  # deadline-per-attempt: the pause before each new attempt


@fault("deadline-per-attempt")
def deadline_per_attempt() -> None:
    """Reads are idempotent, so one that times out is tried again (READ_RETRIES more times), each
    attempt with the call's whole deadline: the caller hears of the deadline only after all of them."""
    get_account, get_positions = RemoteExchange.get_account, RemoteExchange.get_positions

    async def retried(attempt: Callable[[], Any]) -> Any:
        for _ in range(READ_RETRIES):
            try:
                return await attempt()
            except remote_exchange.RemoteDeadlineExceeded:
                await asyncio.sleep(READ_RETRY_PAUSE_S)
        return await attempt()

    async def account(self: RemoteExchange, *, timeout: float | None = None) -> Any:
        return await retried(lambda: get_account(self, timeout=timeout))

    async def positions(self: RemoteExchange, symbol: str = "", *, timeout: float | None = None) -> Any:
        return await retried(lambda: get_positions(self, symbol, timeout=timeout))

    RemoteExchange.get_account = account  # type: ignore[method-assign]
    RemoteExchange.get_positions = positions  # type: ignore[method-assign]


@fault("resync-waits-for-replay")
def resync_waits_for_replay() -> None:
    """After a resubscription the library expects the server to send the last update from before
    the break again, and skips every update until it has seen that one; a server that does not
    replay it delivers nothing more."""
    handle = StreamHandle._handle
    reconnected = StreamHandle._reconnected
    last: dict[int, Any] = {}
    awaited: dict[int, Any] = {}

    async def skipping(self: StreamHandle[Any], message: Any) -> None:
        if id(self) in awaited:
            if message == awaited[id(self)]:
                del awaited[id(self)]
            return
        last[id(self)] = message
        await handle(self, message)

    async def expect_replay(self: StreamHandle[Any], failures: int, broken_at: float | None) -> None:
        if id(self) in last:
            awaited[id(self)] = last[id(self)]
        await reconnected(self, failures, broken_at)

    StreamHandle._handle = skipping  # type: ignore[method-assign]
    StreamHandle._reconnected = expect_replay  # type: ignore[method-assign]


@fault("listener-added-again-after-reconnect")
def listener_added_again_after_reconnect() -> None:
    """The stream keeps a list of listeners and, once a resubscription delivers its first update,
    restores its listener by adding it to that list again: every later update is delivered twice."""
    handle = StreamHandle._handle
    reconnected = StreamHandle._reconnected
    listeners: dict[int, int] = {}
    restoring: set[int] = set()

    async def to_listeners(self: StreamHandle[Any], message: Any) -> None:
        for _ in range(listeners.get(id(self), 1)):
            await handle(self, message)
        if id(self) in restoring:
            restoring.discard(id(self))
            listeners[id(self)] = listeners.get(id(self), 1) + 1

    async def restore(self: StreamHandle[Any], failures: int, broken_at: float | None) -> None:
        restoring.add(id(self))
        await reconnected(self, failures, broken_at)

    StreamHandle._handle = to_listeners  # type: ignore[method-assign]
    StreamHandle._reconnected = restore  # type: ignore[method-assign]


SERVER_DOWN_WAIT_S = 10.0  # server-down-waits-10s: the pause while the connection is down


@fault("server-down-waits-10s")
def server_down_waits_10s() -> None:
    """While the connection is down (the server went away), a broken stream does not watch the
    channel for the server's return: it gives the server a fixed SERVER_DOWN_WAIT_S before it tries
    again, whatever the backoff hints say."""
    pause = StreamHandle._pause

    async def patient(self: StreamHandle[Any], delay: float) -> None:
        channel = self._channel
        if channel is None or channel.get_state() == grpc.ChannelConnectivity.READY:
            await pause(self, delay)
            return
        await asyncio.sleep(SERVER_DOWN_WAIT_S)

    StreamHandle._pause = patient  # type: ignore[method-assign]


CONFLATE_S = 0.05  # symbol-stream-conflated: a symbol's update waits this long for a newer one


@fault("symbol-stream-conflated")
def symbol_stream_conflated() -> None:
    """A position stream of one symbol keeps only that symbol's latest state: an update is held
    CONFLATE_S and replaced by a newer one that arrives meanwhile, so a burst delivers its last only."""

    def conflating(symbol: str, callback: Callable[[Any], object]) -> Callable[[Any], object]:
        if not symbol:
            return callback
        slot: list[Any] = []

        def flush() -> None:
            if slot:
                callback(slot.pop())

        def deliver(message: Any) -> None:
            if not slot:
                asyncio.get_running_loop().call_later(CONFLATE_S, flush)
            slot[:] = [message]

        return deliver

    _position_callbacks(conflating)


@fault("untrusted-certificate-pinned")
def untrusted_certificate_pinned() -> None:
    """A TLS connect whose CA does not verify the server's certificate falls back to "trust on
    first use": it fetches the certificate the server presents, trusts that one, and connects again."""
    connect = RemoteExchange.connect

    async def pinning(self: RemoteExchange) -> None:
        try:
            await connect(self)
        except ConnectTimeout as exc:
            if self._credentials is None or "CERTIFICATE_VERIFY_FAILED" not in str(exc):
                raise
            host, _, port = self.address.rpartition(":")
            presented = await asyncio.to_thread(
                ssl.get_server_certificate, (host.strip("[]"), int(port)), timeout=self.connect_timeout
            )
            channel, self._channel, self._stub = self._channel, None, None
            if channel is not None:
                await channel.close()
            self._credentials = grpc.ssl_channel_credentials(root_certificates=presented.encode())
            await connect(self)

    RemoteExchange.connect = pinning  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    if fault.apply_from(sys.argv[1:] if argv is None else argv) is None:
        return 2
    return driver_main.main()


__all__ = ["FAULTS", "main"]

if __name__ == "__main__":
    sys.exit(main())
