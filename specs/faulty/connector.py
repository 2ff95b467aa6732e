"""A deliberately faulty exchange_connector: the reference program with ONE fault patched in.

    python -m specs.faulty.connector --fault NAME [serve] --listen HOST:PORT --exchange grpc ...

Everything after the fault's name is the reference connector's `serve` command line. The fault is
a small change to the reference's classes and functions (hub, server, program), made in this
process before the reference's main() runs, so the program differs from the reference in that one
behaviour only. specs/faulty/faults.yaml says what each fault breaks and which scenarios catch it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from implementation import stop_signals
from implementation.adapters.grpc_upstream import GrpcExchange
from implementation.connector import __main__ as connector_main
from implementation.connector_core.hub import ACCOUNT, POSITIONS, Hub
from implementation.connector_core.server import ExchangeServer, ExchangeService
from implementation.connector_core.subscription import Subscription, SubscriptionEnded
from implementation.contract.errors import InvalidRequest
from implementation.contract.validation import check_symbol
from implementation.logs import log_event
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.faulty.registry import FaultRegistry

DROP_EVERY = 4  # drop-one-in-n: the 4th, 8th, ... account update is lost
REORDER_FLUSH_S = 0.2  # reorder: a held update with no successor goes out after this long
GET_ACCOUNT_DELAY_S = 0.010  # slow-get-account
LATE_SERVICE_S = 3.0  # late-service: calls are refused this long after start
PORT_HELD_S = 5.0  # port-held-after-exit: how long the orphan holds the port
# port-held-after-exit: the helper listens on the port (SO_REUSEADDR: the program's closed connections
# may linger in TIME_WAIT), says so, and keeps it until PORT_HELD_S after the program is gone
PORT_HOLDER = (
    "import os, socket, sys, time\n"
    "parent = os.getppid()\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen()\n"
    "print('bound', flush=True)\n"
    "while os.getppid() == parent:\n"
    "    time.sleep(0.02)\n"
    "time.sleep(float(sys.argv[3]))\n"
)
NOT_DECIMAL_FIELDS = frozenset({"symbol", "side", "margin_type"})
HUB_LOG = logging.getLogger("implementation.connector_core.hub")  # where the reference logs its subscribers

fault = FaultRegistry("specs.faulty.connector", "[serve] FLAGS...")
FAULTS = fault.faults


# ------------------------------------------------------------------------------------ the fan-out


@fault("drop-one-in-n")
def drop_one_in_n() -> None:
    """Every DROP_EVERY-th account update from the exchange is never fanned out."""
    publish = Hub.publish_account
    received = itertools.count(1)

    def publish_account(self: Hub, account: pb.Account) -> None:
        if next(received) % DROP_EVERY != 0:
            publish(self, account)

    Hub.publish_account = publish_account  # type: ignore[method-assign]


@fault("reorder")
def reorder() -> None:
    """Account updates are fanned out in swapped pairs: 2, 1, 4, 3, ... (a lone one after a pause)."""
    publish = Hub.publish_account
    held: list[tuple[pb.Account, asyncio.TimerHandle]] = []

    def flush(hub: Hub) -> None:
        if held:
            account, _ = held.pop()
            publish(hub, account)

    def publish_account(self: Hub, account: pb.Account) -> None:
        if held:
            earlier, timer = held.pop()
            timer.cancel()
            publish(self, account)
            publish(self, earlier)
        else:
            timer = asyncio.get_running_loop().call_later(REORDER_FLUSH_S, flush, self)
            held.append((account, timer))

    Hub.publish_account = publish_account  # type: ignore[method-assign]


@fault("ignore-symbol-filter")
def ignore_symbol_filter() -> None:
    """SubscribePositions checks the symbol but forwards the positions of every symbol."""

    async def subscribe_positions(
        self: ExchangeService, request: pb.SubscribePositionsRequest, context: Any
    ) -> None:
        try:
            check_symbol(request.symbol)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._stream(POSITIONS, "", context)

    ExchangeService.SubscribePositions = subscribe_positions  # type: ignore[method-assign]


@fault("upstream-per-client")
def upstream_per_client() -> None:
    """Every SubscribeAccount/SubscribePositions client gets its own upstream subscription through
    the exchange adapter, instead of a place in the hub's shared one. The connector still counts and
    logs its subscribers as the reference does, so only the upstream side differs."""
    private: dict[str, set[Subscription]] = {ACCOUNT: set(), POSITIONS: set()}
    count = Hub.subscriber_count

    def subscriber_count(self: Hub, topic: str) -> int:
        return count(self, topic) + len(private[topic])

    async def stream(self: ExchangeService, topic: str, symbol: str, context: Any) -> None:
        await self._enter(context)
        hub: Hub = self._hub
        stats = hub.stats[topic]
        peer = context.peer()

        def enter(sub: Subscription) -> None:
            private[topic].add(sub)
            log_event(HUB_LOG, "subscriber_added", topic=topic, symbol=symbol, peer=peer)

        def leave(sub: Subscription, exc: BaseException | None) -> None:
            private[topic].discard(sub)
            reason = "client gone" if isinstance(exc, asyncio.CancelledError) else "ended"
            log_event(HUB_LOG, "subscriber_removed", topic=topic, symbol=symbol, peer=peer, reason=reason)

        subscription = Subscription(topic, symbol, peer, hub.queue_size, on_enter=enter, on_exit=leave)
        call: Any = None
        feed: asyncio.Task[None] | None = None
        try:
            try:
                call = _open_upstream(self._exchange, topic, symbol)
                await call.initial_metadata()  # the upstream subscription is in place
                feed = asyncio.get_running_loop().create_task(_relay(call, subscription))
                async with subscription:
                    await context.send_initial_metadata(())
                    while True:
                        await context.write(await subscription.next())
                        stats.sent += 1
            except SubscriptionEnded as ended:
                await context.abort(ended.code, ended.details)
        finally:
            if feed is not None:
                feed.cancel()
                await asyncio.gather(feed, return_exceptions=True)
            elif call is not None:  # the client left before the relay started
                call.cancel()
            self._gate.leave()

    Hub.subscriber_count = subscriber_count  # type: ignore[method-assign]
    ExchangeService._stream = stream  # type: ignore[method-assign]


def _open_upstream(exchange: Any, topic: str, symbol: str) -> Any:
    """A new SubscribeAccount/SubscribePositions call on the exchange adapter's own channel."""
    if not isinstance(exchange, GrpcExchange):
        raise RuntimeError("upstream-per-client needs the grpc exchange adapter (--exchange grpc)")
    remote = exchange._remote
    stub = remote._service()
    if topic == ACCOUNT:
        return stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=remote._metadata)
    return stub.SubscribePositions(pb.SubscribePositionsRequest(symbol=symbol), metadata=remote._metadata)


async def _relay(call: Any, subscription: Subscription) -> None:
    try:
        async for message in call:
            if not subscription.put_nowait(message):
                subscription.end(grpc.StatusCode.RESOURCE_EXHAUSTED, "subscriber fell behind", discard=True)
                return
        subscription.end(grpc.StatusCode.UNAVAILABLE, "the upstream ended the stream", discard=False)
    except grpc.aio.AioRpcError as exc:
        subscription.end(
            grpc.StatusCode.UNAVAILABLE, f"upstream exchange unavailable: {exc.details()}", discard=False
        )
    finally:
        call.cancel()


# ------------------------------------------------------------------------------------ health and lifecycle


@fault("never-serving")
def never_serving() -> None:
    """Health stays NOT_SERVING even once the upstream is up (the streams themselves work)."""
    on_serving = ExchangeServer._on_serving

    async def stay_not_serving(self: ExchangeServer, serving: bool) -> None:
        await on_serving(self, False)

    ExchangeServer._on_serving = stay_not_serving  # type: ignore[method-assign]


@fault("ignore-sigterm")
def ignore_sigterm() -> None:
    """SIGTERM does nothing (SIGINT still stops the program)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_signals.STOP_SIGNALS = (signal.SIGINT,)  # type: ignore[assignment]


@fault("abrupt-shutdown")
def abrupt_shutdown() -> None:
    """SIGTERM ends the process at once with exit code 0: no NOT_SERVING, no status on open streams."""
    stop_signals.STOP_SIGNALS = (signal.SIGINT,)  # type: ignore[assignment]
    serve = connector_main.serve

    async def serve_until_killed(settings: Any) -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, os._exit, 0)
        return await serve(settings)

    connector_main.serve = serve_until_killed


@fault("leak-task-per-stream")
def leak_task_per_stream() -> None:
    """Every stream that ends leaves an asyncio task behind, waiting forever."""
    stream = ExchangeService._stream
    leaked: list[asyncio.Task[Any]] = []

    async def leaky_stream(self: ExchangeService, topic: str, symbol: str, context: Any) -> None:
        try:
            await stream(self, topic, symbol, context)
        finally:
            never = asyncio.Event()
            leaked.append(
                asyncio.get_running_loop().create_task(never.wait(), name=f"{topic}-stream-cleanup")
            )

    ExchangeService._stream = leaky_stream  # type: ignore[method-assign]


@fault("late-service")
def late_service() -> None:
    """For its first LATE_SERVICE_S the ExchangeService refuses calls (UNAVAILABLE) while health says SERVING."""
    started = time.monotonic()
    get_account = ExchangeService.GetAccount

    async def warming_up(self: ExchangeService, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        if time.monotonic() - started < LATE_SERVICE_S:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "still warming up")
        return await get_account(self, request, context)

    ExchangeService.GetAccount = warming_up  # type: ignore[method-assign]


@fault("port-held-after-exit")
def port_held_after_exit() -> None:
    """On its way out the program starts a detached helper that listens on its port until PORT_HELD_S
    after the program exited (a leaked child holding the port)."""
    serve = connector_main.serve

    def hold(listen: str) -> None:
        host, _, port = listen.rpartition(":")
        holder = subprocess.Popen(
            [sys.executable, "-c", PORT_HOLDER, host or "127.0.0.1", port, str(PORT_HELD_S)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        assert holder.stdout is not None
        holder.stdout.readline()  # "bound": the port is held before this process exits

    async def serve_then_hold(settings: Any) -> int:
        code = await serve(settings)
        await asyncio.to_thread(hold, str(settings.listen))
        return code

    connector_main.serve = serve_then_hold


@fault("shutdown-cancels-streams")
def shutdown_cancels_streams() -> None:
    """On SIGTERM open streams end with CANCELLED "server stopping" instead of UNAVAILABLE "shutting down"."""

    def close_subscribers(self: Hub, details: str = "") -> None:
        self._end_all(grpc.StatusCode.CANCELLED, "server stopping")

    Hub.close_subscribers = close_subscribers  # type: ignore[method-assign]


@fault("second-sigterm-exits-1")
def second_sigterm_exits_1() -> None:
    """The first SIGTERM saves state for half a second, then starts the graceful shutdown; a second
    one meanwhile or during it exits at once with code 1."""
    stop_signals.STOP_SIGNALS = (signal.SIGINT,)  # type: ignore[assignment]
    serve = connector_main.serve
    seen = itertools.count()

    def on_sigterm() -> None:
        if next(seen) == 0:
            # state saved first (half a second), then the reference's own graceful path
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, os.kill, os.getpid(), signal.SIGINT)
        else:
            os._exit(1)

    async def serve_impatiently(settings: Any) -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await serve(settings)

    connector_main.serve = serve_impatiently


@fault("share-busy-port")
def share_busy_port() -> None:
    """grpc's default SO_REUSEPORT: on a port another SO_REUSEPORT server holds, the bind succeeds and
    the two share its connections."""
    from implementation.connector_core import server

    server.SERVER_OPTIONS = (
        *(o for o in server.SERVER_OPTIONS if o[0] != "grpc.so_reuseport"),
        ("grpc.so_reuseport", 1),
    )


@fault("no-reflection")
def no_reflection() -> None:
    """Server reflection is not registered (ExchangeServer(reflection=False)); the manifest still
    claims `reflection`."""
    init = ExchangeServer.__init__

    def without_reflection(self: ExchangeServer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.reflection = False

    ExchangeServer.__init__ = without_reflection  # type: ignore[method-assign]


@fault("cancel-in-flight-on-sigterm")
def cancel_in_flight_on_sigterm() -> None:
    """On SIGTERM the call gate reports idle at once: calls in flight are cancelled, not answered."""
    from implementation.connector_core.server import _Gate

    async def idle_at_once(self: _Gate, timeout: float) -> bool:
        return True

    _Gate.wait_idle = idle_at_once  # type: ignore[method-assign]


@fault("idle-when-first-call-leaves")
def idle_when_first_call_leaves() -> None:
    """During a shutdown the gate reports idle as soon as one call leaves: the others are cancelled."""
    from implementation.connector_core.server import _Gate

    def leave(self: _Gate) -> None:
        self.active -= 1
        if self._idle is not None:
            self._idle.set()

    _Gate.leave = leave  # type: ignore[method-assign]


@fault("idle-waits-grace-period")
def idle_waits_grace_period() -> None:
    """An idle connector (no call in flight) waits its whole grace period (5 s) on SIGTERM before it exits."""
    from implementation.connector_core.server import _Gate

    wait_idle = _Gate.wait_idle

    async def wait_out(self: _Gate, timeout: float) -> bool:
        if self.active == 0:
            await asyncio.sleep(timeout)
            return True
        return await wait_idle(self, timeout)

    _Gate.wait_idle = wait_out  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ unary calls and values


@fault("get-account-pass-through")
def get_account_pass_through() -> None:
    """GetAccount never answers from the hub's view: every client call becomes a call to the exchange."""
    Hub.current_account = lambda self: None  # type: ignore[method-assign]


@fault("late-stream-headers")
def late_stream_headers() -> None:
    """Streams send their response headers only with their first update, not once subscribed (as a
    relay that holds the headers back would)."""
    stream = ExchangeService._stream

    class NoEarlyHeaders:
        def __init__(self, context: Any) -> None:
            self._context = context

        async def send_initial_metadata(self, metadata: Any) -> None:
            return None

        def __getattr__(self, name: str) -> Any:
            return getattr(self._context, name)

    async def late(self: ExchangeService, topic: str, symbol: str, context: Any, *rest: Any) -> None:
        await stream(self, topic, symbol, cast(Any, NoEarlyHeaders(context)), *rest)

    ExchangeService._stream = late  # type: ignore[method-assign]


@fault("slow-get-account")
def slow_get_account() -> None:
    """GetAccount answers GET_ACCOUNT_DELAY_S later than the reference."""
    get_account = ExchangeService.GetAccount

    async def slow(self: ExchangeService, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        await asyncio.sleep(GET_ACCOUNT_DELAY_S)
        return await get_account(self, request, context)

    ExchangeService.GetAccount = slow  # type: ignore[method-assign]


def rerendered(message: Any, render: Callable[[float], str]) -> Any:
    """A copy with every decimal string re-rendered from its float value by `render`."""
    copy = type(message)()
    copy.CopyFrom(message)
    for field in copy.DESCRIPTOR.fields:
        value = getattr(copy, field.name)
        if field.name in NOT_DECIMAL_FIELDS or not isinstance(value, str):
            continue
        try:
            setattr(copy, field.name, render(float(value)))
        except ValueError:
            continue
    return copy


def floated(message: Any) -> Any:
    """A copy with every decimal string re-rendered through float(): "10000.00" -> "10000.0", "0.00001" -> "1e-05"."""
    return rerendered(message, str)


@fault("float-decimals")
def float_decimals() -> None:
    """Money leaves the connector as float renderings instead of the exchange's decimal strings."""
    next_message = Subscription.next
    get_account = ExchangeService.GetAccount
    get_positions = ExchangeService.GetPositions

    async def next_floated(self: Subscription) -> Any:
        return floated(await next_message(self))

    async def account(self: ExchangeService, request: Any, context: Any) -> pb.Account:
        return floated(await get_account(self, request, context))  # type: ignore[no-any-return]

    async def positions(self: ExchangeService, request: Any, context: Any) -> pb.GetPositionsResponse:
        answer = await get_positions(self, request, context)
        return pb.GetPositionsResponse(positions=[floated(p) for p in answer.positions])

    Subscription.next = next_floated  # type: ignore[method-assign]
    ExchangeService.GetAccount = account  # type: ignore[method-assign]
    ExchangeService.GetPositions = positions  # type: ignore[method-assign]


def exponent_rendered(message: Any) -> Any:
    """A copy with every decimal string in exponent notation: "10000.10" -> "1.000010e+04"."""
    return rerendered(message, lambda value: f"{value:e}")


@fault("exponent-decimals")
def exponent_decimals() -> None:
    """Stream messages carry their money in exponent notation (unary answers stay right): a client
    library that checks the contract's decimals refuses every update."""
    next_message = Subscription.next

    async def next_exponent(self: Subscription) -> Any:
        return exponent_rendered(await next_message(self))

    Subscription.next = next_exponent  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ freshness and back-pressure


@fault("no-keepalive")
def no_keepalive() -> None:
    """The upstream channel has no keepalive and the hub no watchdog: a frozen exchange is never noticed."""
    from implementation.adapters import grpc_upstream

    async def no_watchdog(self: Hub) -> str:
        await asyncio.Event().wait()
        return "never"

    grpc_upstream.keepalive_options = lambda keepalive, timeout: []
    Hub._watch = no_watchdog  # type: ignore[method-assign]


@fault("no-freshness-bound")
def no_freshness_bound() -> None:
    """A hung upstream is still detected (health, streams), but GetAccount goes on answering OK from
    the last account it saw, as if it were current."""
    publish = Hub.publish_account

    def publish_account(self: Hub, account: pb.Account) -> None:
        self.__dict__["kept_account"] = account
        publish(self, account)

    Hub.publish_account = publish_account  # type: ignore[method-assign]
    Hub.stale_reason = lambda self: None  # type: ignore[method-assign]
    Hub.current_account = lambda self: self.__dict__.get("kept_account")  # type: ignore[method-assign]


@fault("slow-consumer-never-dropped")
def slow_consumer_never_dropped() -> None:
    """No subscriber is ever dropped for falling behind: no lag bound, no queue bound."""
    init = Hub.__init__

    def unbounded(self: Hub, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.queue_size = 2**62

    Hub.__init__ = unbounded  # type: ignore[method-assign]
    Subscription.lag = lambda self, now: 0.0  # type: ignore[method-assign]


@fault("quiet-is-stale")
def quiet_is_stale() -> None:
    """No liveness read: the data age is the time since the last update, so a quiet market looks hung."""

    async def no_probe(self: Hub) -> None:
        return None

    Hub._probe = no_probe  # type: ignore[method-assign]


@fault("malformed-unknown")
def malformed_unknown() -> None:
    """Requests are parsed as the generated code does: garbage raises inside grpc (UNKNOWN, a traceback)."""
    from implementation.connector_core import service_handlers

    service_handlers._parser = lambda method, kind: kind.FromString


@fault("token-log-per-call")
def token_log_per_call() -> None:
    """Every rejected token is logged, none is counted."""
    from implementation.connector_core import auth

    def refuse(self: Any, handler: Any, details: Any, reason: str, message: str) -> Any:
        log_event(
            logging.getLogger("implementation.connector_core.auth"), "token_rejected", level=logging.WARNING
        )
        return auth._refusal(handler, message, self.stats)

    auth.BearerTokenInterceptor._refuse = refuse  # type: ignore[method-assign]


@fault("get-positions-never-answers")
def get_positions_never_answers() -> None:
    """GetPositions never answers: the call waits until the client gives up (a wedged handler)."""

    async def wedged(self: ExchangeService, request: pb.GetPositionsRequest, context: Any) -> Any:
        await asyncio.Event().wait()

    ExchangeService.GetPositions = wedged  # type: ignore[method-assign]


@fault("positions-pass-through")
def positions_pass_through() -> None:
    """Every GetPositions becomes its own upstream call."""
    from implementation.connector_core.shared_calls import SharedCalls

    async def call(self: Any, key: Any, start: Any) -> Any:
        self.started += 1
        return await start()

    SharedCalls.call = call  # type: ignore[method-assign]


@fault("shared-callers-uncounted")
def shared_callers_uncounted() -> None:
    """A caller that joins a GetPositions already in flight shares it, but is not counted in
    exchange_connector_get_positions_shared_total (the metric says sharing never happens)."""
    from implementation.connector_core.shared_calls import SharedCalls

    original = SharedCalls.call

    async def call(self: Any, key: Any, start: Any) -> Any:
        in_flight = self._in_flight.get(key)
        if in_flight is None:
            return await original(self, key, start)
        return await asyncio.shield(in_flight)  # joined, uncounted

    SharedCalls.call = call  # type: ignore[method-assign]


@fault("upstream-calls-counted-on-answer")
def upstream_calls_counted_on_answer() -> None:
    """exchange_connector_upstream_get_positions_calls_total counts a GetPositions made to the
    exchange only once it is answered: a call still in flight (or cancelled) is not counted."""
    from implementation.connector_core.shared_calls import SharedCalls

    original = SharedCalls.call

    async def call(self: Any, key: Any, start: Any) -> Any:
        async def counted_on_answer() -> Any:
            self.started -= 1  # undo the count made as the call starts ...
            answer = await start()
            self.started += 1  # ... and count it once answered
            return answer

        return await original(self, key, counted_on_answer)

    SharedCalls.call = call  # type: ignore[method-assign]


@fault("upstream-connected-while-dialling")
def upstream_connected_while_dialling() -> None:
    """exchange_connector_upstream_connections reads 1 from the start, while the connector is still
    dialling an upstream that does not answer (the gauge is set as the dial starts)."""
    from implementation.connector_core.hub import Hub

    original = Hub.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.upstream_connections = 1

    Hub.__init__ = init  # type: ignore[method-assign]


@fault("upstream-connections-stays-up")
def upstream_connections_stays_up() -> None:
    """exchange_connector_upstream_connections goes to 1 at the first connection and stays there:
    a lost upstream is never taken off the gauge (its alert never fires)."""
    from implementation.connector_core.hub import Hub

    def read(self: Any) -> int:
        return int(self.__dict__.get("_connections_shown", 0))

    def write(self: Any, value: int) -> None:
        if value or not read(self):
            self.__dict__["_connections_shown"] = value

    Hub.upstream_connections = property(read, write)  # type: ignore[assignment]


@fault("malformed-not-counted-as-read")
def malformed_not_counted_as_read() -> None:
    """exchange_connector_upstream_messages_total counts only the updates that pass validation: a
    malformed update read from the exchange is counted as invalid but not as read."""
    from implementation.connector_core.hub import Hub

    original = Hub._reject  # called for every malformed update, and only then

    def reject(topic: str, stats: Any, exc: Any) -> None:
        original(topic, stats, exc)
        stats.received -= 1

    Hub._reject = staticmethod(reject)  # type: ignore[method-assign]


@fault("malformed-uncounted")
def malformed_uncounted() -> None:
    """A malformed update from the exchange is logged and dropped but never counted in
    exchange_connector_upstream_invalid_messages_total."""
    from implementation.connector_core.hub import Hub

    original = Hub._reject

    def reject(topic: str, stats: Any, exc: Any) -> None:
        original(topic, stats, exc)
        stats.invalid -= 1

    Hub._reject = staticmethod(reject)  # type: ignore[method-assign]


@fault("sent-counted-per-update")
def sent_counted_per_update() -> None:
    """exchange_connector_messages_sent_total counts each update fanned out once, however many
    subscribers it is written to."""
    from implementation.connector_core.hub import Hub, TopicStats

    def read(self: Any) -> int:
        return int(self.__dict__.get("_per_update", 0))

    TopicStats.sent = property(read, lambda self, value: None)  # type: ignore[assignment]
    original = Hub.publish_account

    def publish_account(self: Any, account: Any) -> None:
        stats = self.stats["account"]
        invalid = stats.invalid
        original(self, account)
        if stats.invalid == invalid and self._subscribers["account"]:
            stats.__dict__["_per_update"] = read(stats) + 1

    Hub.publish_account = publish_account  # type: ignore[method-assign]


@fault("no-overload-shedding")
def no_overload_shedding() -> None:
    """The upstream is read on the loop that writes to the subscribers, in lockstep with them, while
    overload is judged only by what the subscribers are owed: under overload the backlog waits
    unread in the upstream transport, where no mailbox shows it, so nobody is shed or refused and
    every subscriber drifts into the past together."""

    def same_loop(make_exchange: Callable[[], Any]) -> Any:
        return make_exchange()

    setattr(connector_main, "ThreadedExchange", same_loop)  # noqa: B010 - a name the module imported


def _stamp_s(account: pb.Account) -> float:
    return account.updated_at.seconds + account.updated_at.nanos * 1e-9


@fault("upstream-lag-counts-against-subscribers")
def upstream_lag_counts_against_subscribers() -> None:
    """Each subscriber's lag counts from when the update should have been read (the read less the
    upstream lag), not from the connector's read: while the exchange's stamps fall behind, every
    subscriber is dropped for lag, however promptly it reads."""
    init, put = Hub.__init__, Subscription.put_nowait
    hubs: list[Hub] = []

    def remembered(self: Hub, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        hubs.append(self)

    def put_earlier(self: Subscription, message: Any, stamp: float = 0.0) -> bool:
        return put(self, message, stamp - (hubs[-1].freshness.upstream_lag if hubs else 0.0))

    Hub.__init__ = remembered  # type: ignore[method-assign]
    Subscription.put_nowait = put_earlier  # type: ignore[method-assign]


@fault("lag-never-counted")
def lag_never_counted() -> None:
    """The lag's floor is taken from the newest read's delay, not the most punctual one: every read
    is its own best case, so the upstream lag is always 0 however far the stamps fall behind."""
    from implementation.connector_core.freshness import Freshness

    read = Freshness.account_read

    def floor_is_newest(self: Freshness, account: pb.Account) -> None:
        self._floor = float("inf")
        read(self, account)

    Freshness.account_read = floor_is_newest  # type: ignore[method-assign]


@fault("repeated-stamp-counts-as-lag")
def repeated_stamp_counts_as_lag() -> None:
    """A stamp equal to the newest one counts (>= where the reference has >): an account sent again
    unchanged looks ever later, so a quiet account that keeps being resent makes the view stale."""
    from implementation.connector_core.freshness import Freshness

    read = Freshness.account_read

    def repeat_counts(self: Freshness, account: pb.Account) -> None:
        if _stamp_s(account) == self._newest_stamp:
            self._newest_stamp = float("-inf")
        read(self, account)

    Freshness.account_read = repeat_counts  # type: ignore[method-assign]


@fault("clock-offset-counts-as-lag")
def clock_offset_counts_as_lag() -> None:
    """The lag is how far a new stamp is from the read time, either way, with no floor: an exchange
    clock a constant few seconds ahead of or behind the connector's counts as lag."""
    from implementation.connector_core.freshness import Freshness

    read = Freshness.account_read

    def absolute(self: Freshness, account: pb.Account) -> None:
        newest = self._newest_stamp
        read(self, account)
        if self._newest_stamp != newest:
            self.upstream_lag = abs(time.time() - self._newest_stamp)

    Freshness.account_read = absolute  # type: ignore[method-assign]


@fault("serving-again-while-frozen")
def serving_again_while_frozen() -> None:
    """After the watchdog gives a hung upstream up, the hub asks whether it is back by waiting for
    its channel to be ready, not for an answer: a frozen exchange whose connection is still open
    looks back at once, and health flaps to SERVING until the watchdog gives it up again."""
    run = Hub._run_upstream
    get_account = GrpcExchange.get_account

    async def run_upstream(self: Hub) -> str:
        try:
            return await run(self)
        finally:
            # the GrpcExchange itself, also when it runs on a thread of its own (ThreadedExchange)
            exchange = self.exchange.__dict__.get("_inner") or self.exchange
            exchange.__dict__["ready_is_answering"] = True

    async def ready_or_answer(self: GrpcExchange) -> pb.Account:
        if self.__dict__.pop("ready_is_answering", False):  # the hub's "is it back?" after an outage
            await self.connect()
            return pb.Account()
        return await get_account(self)

    Hub._run_upstream = run_upstream  # type: ignore[method-assign]
    GrpcExchange.get_account = ready_or_answer  # type: ignore[method-assign]


@fault("stall-drops-readers")
def stall_drops_readers() -> None:
    """No heartbeat on the loop: a stall of the connector's own is taken for its readers' lag."""
    from implementation.connector_core.stall import LoopStalls

    LoopStalls.excused = lambda self, now: False  # type: ignore[method-assign]


@fault("burst-cancelled")
def burst_cancelled() -> None:
    """grpc's default queue of calls waiting for the event loop: past 1,000, a burst is CANCELLED."""
    from implementation.connector_core import server

    server.SERVER_OPTIONS = tuple(o for o in server.SERVER_OPTIONS if "max_pending_requests" not in o[0])


@fault("no-data-age-header")
def no_data_age_header() -> None:
    """GetAccount and GetPositions answers carry no x-opensqt-data-age-ms: nobody can tell their age."""
    from implementation.connector_core import server

    server.DATA_AGE_KEY = "x-opensqt-unrelated"


# ------------------------------------------------------------------------------------ edges: start-up, recovery, credentials


@fault("serving-at-start")
def serving_at_start() -> None:
    """Health says SERVING as soon as the program listens, before its upstream answers (calls are
    still refused until it does)."""
    start = Hub.start

    async def eager(self: Hub) -> None:
        if self._on_serving is not None:
            await self._on_serving(True)
        await start(self)

    Hub.start = eager  # type: ignore[method-assign]


@fault("positions-not-resubscribed")
def positions_not_resubscribed() -> None:
    """After the upstream comes back, only the account subscription is opened again: the positions
    stream of the first connection is never replaced (the connector waits on it forever)."""
    run = GrpcExchange.run_position_stream
    runs = itertools.count()

    async def first_only(self: GrpcExchange, callback: Any) -> None:
        if next(runs) == 0:
            await run(self, callback)
            return
        await asyncio.Event().wait()

    GrpcExchange.run_position_stream = first_only  # type: ignore[method-assign]


@fault("pre-outage-account")
def pre_outage_account() -> None:
    """The account view survives an outage: after the recovery GetAccount answers the account held
    before it until the next account update, whatever the exchange holds now."""
    set_serving = Hub._set_serving

    async def keep_view(self: Hub, serving: bool) -> None:
        kept = self._account
        await set_serving(self, serving)
        self._account = kept

    Hub._set_serving = keep_view  # type: ignore[method-assign]


class _PrefixDigest:
    """hmac's compare_digest as a prefix test: a longer token that starts with the right one passes."""

    @staticmethod
    def compare_digest(presented: bytes, expected: bytes) -> bool:
        return presented.startswith(expected)


class _CaseBlindDigest:
    """hmac's compare_digest ignoring case: the token in any case passes."""

    @staticmethod
    def compare_digest(presented: bytes, expected: bytes) -> bool:
        return presented.lower() == expected.lower()


@fault("token-prefix")
def token_prefix() -> None:
    """The bearer token is checked with startswith: the right token followed by anything is served."""
    from implementation.connector_core import auth

    auth.hmac = _PrefixDigest  # type: ignore[attr-defined,assignment]


@fault("token-case-blind")
def token_case_blind() -> None:
    """The bearer token is compared without regard to case."""
    from implementation.connector_core import auth

    auth.hmac = _CaseBlindDigest  # type: ignore[attr-defined,assignment]


ACCOUNT_CACHE_S = 5.0  # get-account-cached: how long one GetAccount answer is served again


@fault("get-account-cached")
def get_account_cached() -> None:
    """GetAccount answers are cached for ACCOUNT_CACHE_S: a change the exchange pushed meanwhile is
    not seen by unary callers."""
    get_account = ExchangeService.GetAccount
    cached: list[tuple[float, pb.Account]] = []

    async def from_cache(self: ExchangeService, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        now = time.monotonic()
        if cached and now - cached[0][0] < ACCOUNT_CACHE_S:
            return cached[0][1]
        answer: pb.Account = await get_account(self, request, context)
        cached[:] = [(now, answer)]
        return answer

    ExchangeService.GetAccount = from_cache  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ symbols, outages, bad upstream data

POSITIONS_CACHE_S = 5.0  # positions-cached: how long one GetPositions answer is served again per symbol
GENERIC_UNAVAILABLE = "service temporarily unavailable; retry later"  # upstream-failure-unnamed


class _RewrittenContext:
    """A servicer context whose aborts and response headers pass through `abort`/`headers` first."""

    def __init__(
        self,
        context: Any,
        abort: Callable[[grpc.StatusCode, str], str] | None = None,
        headers: Callable[[str, str], str] | None = None,
    ) -> None:
        self._context, self._rewrite_abort, self._rewrite_header = context, abort, headers

    async def abort(self, code: grpc.StatusCode, details: str = "", *rest: Any) -> Any:
        if self._rewrite_abort is not None:
            details = self._rewrite_abort(code, details)
        return await self._context.abort(code, details, *rest)

    async def send_initial_metadata(self, metadata: Any) -> None:
        rewrite = self._rewrite_header
        if rewrite is not None:
            metadata = tuple((key, rewrite(key, value)) for key, value in metadata)
        await self._context.send_initial_metadata(metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _rewrite_every_handler(
    abort: Callable[[grpc.StatusCode, str], str] | None = None,
    headers: Callable[[str, str], str] | None = None,
) -> None:
    """GetAccount, GetPositions and both streams answer through a _RewrittenContext."""
    get_account, get_positions, stream = (
        ExchangeService.GetAccount,
        ExchangeService.GetPositions,
        ExchangeService._stream,
    )

    def wrapped(context: Any) -> Any:
        return cast(Any, _RewrittenContext(context, abort, headers))

    async def account(self: ExchangeService, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        return await get_account(self, request, wrapped(context))

    async def positions(
        self: ExchangeService, request: pb.GetPositionsRequest, context: Any
    ) -> pb.GetPositionsResponse:
        return await get_positions(self, request, wrapped(context))

    async def streamed(self: ExchangeService, topic: str, symbol: str, context: Any) -> None:
        await stream(self, topic, symbol, wrapped(context))

    ExchangeService.GetAccount = account  # type: ignore[method-assign]
    ExchangeService.GetPositions = positions  # type: ignore[method-assign]
    ExchangeService._stream = streamed  # type: ignore[method-assign]


@fault("symbol-prefix-match")
def symbol_prefix_match() -> None:
    """The symbol is checked with re.match instead of re.fullmatch: anything that starts with a valid
    symbol passes ("BTC-USDT", 33 or 65,536 letters), only a bad first character is refused."""
    from implementation.connector_core import server
    from implementation.contract.validation import SYMBOL

    def loose(symbol: str) -> str:
        if symbol and SYMBOL.match(symbol):
            return symbol
        return check_symbol(symbol)

    server.check_symbol = loose  # type: ignore[attr-defined]


@fault("symbol-not-named")
def symbol_not_named() -> None:
    """An invalid symbol is refused with details that say what a symbol must be but not which one
    was refused (an implementer wary of echoing client input)."""
    from implementation.connector_core import server

    def unnamed(symbol: str) -> str:
        try:
            return check_symbol(symbol)
        except InvalidRequest:
            raise InvalidRequest(
                "invalid symbol: expected 1-32 upper-case letters and digits, or empty for all"
            ) from None

    server.check_symbol = unnamed  # type: ignore[attr-defined]


@fault("get-positions-unfiltered")
def get_positions_unfiltered() -> None:
    """GetPositions asks the exchange for every symbol (one upstream call shared by all callers) and
    answers the list unfiltered, whatever the request's symbol (invalid symbols are still refused)."""
    get_positions = ExchangeService.GetPositions

    async def every_symbol(
        self: ExchangeService, request: pb.GetPositionsRequest, context: Any
    ) -> pb.GetPositionsResponse:
        try:
            check_symbol(request.symbol)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await get_positions(self, pb.GetPositionsRequest(symbol=""), context)

    ExchangeService.GetPositions = every_symbol  # type: ignore[method-assign]


@fault("positions-cached")
def positions_cached() -> None:
    """GetPositions answers are cached per symbol for POSITIONS_CACHE_S: the exchange's changes
    meanwhile are not seen by unary callers."""
    get_positions = ExchangeService.GetPositions
    cached: dict[str, tuple[float, pb.GetPositionsResponse]] = {}

    async def from_cache(
        self: ExchangeService, request: pb.GetPositionsRequest, context: Any
    ) -> pb.GetPositionsResponse:
        now = time.monotonic()
        hit = cached.get(request.symbol)
        if hit is not None and now - hit[0] < POSITIONS_CACHE_S:
            return hit[1]
        answer: pb.GetPositionsResponse = await get_positions(self, request, context)
        cached[request.symbol] = (now, answer)
        return answer

    ExchangeService.GetPositions = from_cache  # type: ignore[method-assign]


@fault("data-age-in-seconds")
def data_age_in_seconds() -> None:
    """x-opensqt-data-age-ms carries the data age in whole seconds (the metric's unit), not milliseconds."""
    from implementation.connector_core.server import DATA_AGE_KEY

    def seconds(key: str, value: str) -> str:
        return str(int(value) // 1000) if key == DATA_AGE_KEY else value

    _rewrite_every_handler(headers=seconds)


@fault("streams-survive-outage")
def streams_survive_outage() -> None:
    """When the exchange fails, open streams are kept open (to resume once it is back) instead of
    ending with UNAVAILABLE; the updates of the outage are lost to them without a word."""
    end_all = Hub._end_all

    def end_only_on_shutdown(self: Hub, code: grpc.StatusCode, details: str) -> None:
        if self._closed:  # close_subscribers: the connector is shutting down
            end_all(self, code, details)

    Hub._end_all = end_only_on_shutdown  # type: ignore[method-assign]


@fault("subscribe-while-down")
def subscribe_while_down() -> None:
    """While the exchange is down, a new subscription is accepted (it waits for the exchange's
    return) instead of being refused with UNAVAILABLE."""
    add = Hub._add

    def admit(self: Hub, sub: Subscription) -> None:
        if self._closed or self._serving:
            add(self, sub)
            return
        self._subscribers[sub.topic][sub] = None
        log_event(HUB_LOG, "subscriber_added", topic=sub.topic, symbol=sub.symbol, peer=sub.peer)

    Hub._add = admit  # type: ignore[method-assign]


@fault("health-ignores-upstream-loss")
def health_ignores_upstream_loss() -> None:
    """The upstream-loss path stops serving but does not tell health: health stays SERVING through an
    outage (only start-up and the freshness watchdog move it)."""
    set_serving = Hub._set_serving

    async def untold(self: Hub, serving: bool) -> None:
        if serving:
            await set_serving(self, serving)
            return
        on_serving, self._on_serving = self._on_serving, None
        try:
            await set_serving(self, serving)
        finally:
            self._on_serving = on_serving

    Hub._set_serving = untold  # type: ignore[method-assign]


@fault("upstream-failure-unnamed")
def upstream_failure_unnamed() -> None:
    """The statuses of an upstream failure (ended streams, refused calls and subscriptions) carry a
    generic "service temporarily unavailable" instead of saying the upstream exchange failed."""

    def generic(code: grpc.StatusCode, details: str) -> str:
        if code is grpc.StatusCode.UNAVAILABLE and details.startswith("upstream exchange"):
            return GENERIC_UNAVAILABLE
        return details

    _rewrite_every_handler(abort=generic)


@fault("health-serving-while-draining")
def health_serving_while_draining() -> None:
    """On SIGTERM the connector drains (new calls refused, streams ended "shutting down") but its
    health keeps reading SERVING until the port closes."""
    init = ExchangeServer.__init__

    async def stay_serving() -> None:
        return None

    def without_graceful_health(self: ExchangeServer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.health.enter_graceful_shutdown = stay_serving

    ExchangeServer.__init__ = without_graceful_health  # type: ignore[method-assign]


@fault("liveness-answer-fanned-out")
def liveness_answer_fanned_out() -> None:
    """The liveness read's answer (GetAccount to a quiet upstream) goes through the update path: the
    account subscribers receive the last update again after every second of quiet."""

    async def probe(self: Hub) -> None:
        self.probes += 1
        try:
            account = await self.exchange.get_account()
        except Exception:  # the stream or the hung check will say what is wrong
            return
        self.freshness.caught_up()
        self.publish_account(account)

    Hub._probe = probe  # type: ignore[method-assign]


@fault("positions-unvalidated")
def positions_unvalidated() -> None:
    """Position updates from the exchange are fanned out unchecked (only account updates are
    validated): a malformed money field reaches the subscribers."""
    from implementation.connector_core import hub

    hub.validate_position = lambda position: position  # type: ignore[attr-defined]


@fault("invalid-account-keeps-view")
def invalid_account_keeps_view() -> None:
    """A refused account update leaves the view as it was: GetAccount goes on answering the last
    valid account although the exchange's account is now one the connector cannot vouch for."""
    publish = Hub.publish_account

    def keep_view(self: Hub, account: pb.Account) -> None:
        kept = self._account
        publish(self, account)
        if self._account is None:
            self._account = kept

    Hub.publish_account = keep_view  # type: ignore[method-assign]


@fault("invalid-data-logged-as-warning")
def invalid_data_logged_as_warning() -> None:
    """A refused upstream update is logged at warning level, not error."""

    def reject(topic: str, stats: Any, exc: Exception) -> None:
        stats.invalid += 1
        log_event(HUB_LOG, "upstream_invalid_data", level=logging.WARNING, topic=topic, reason=str(exc))

    Hub._reject = staticmethod(reject)  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ credentials, TLS, reflection


def _authorization_values(metadata: Any) -> list[str]:
    """The `authorization` header values of a call, as text, in the order sent."""
    return [
        value.decode("latin-1") if isinstance(value, bytes) else str(value)
        for key, value in metadata or ()
        if key == "authorization"
    ]


def _patch_presented_token(presented: Callable[[list[str]], str | None]) -> None:
    """The bearer-token check reads the presented token through `presented` (given every
    `authorization` value); the comparison and the refusals stay the reference's."""
    from implementation.connector_core import auth

    def presented_token(metadata: Any) -> str | None:
        return presented(_authorization_values(metadata))

    auth._presented_token = presented_token


@fault("token-optional")
def token_optional() -> None:
    """A call with no `authorization` header at all is served: only a header that is present is
    checked (the check was written for the value, not for its absence)."""
    from implementation.connector_core import auth

    intercept = auth.BearerTokenInterceptor.intercept_service

    async def check_only_sent(self: Any, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if not _authorization_values(details.invocation_metadata):
            return await continuation(details)
        return await intercept(self, continuation, details)

    auth.BearerTokenInterceptor.intercept_service = check_only_sent  # type: ignore[method-assign,assignment]


class _AnyTokenDigest:
    """hmac's compare_digest as a presence test: any non-empty token passes."""

    @staticmethod
    def compare_digest(presented: bytes, expected: bytes) -> bool:
        return bool(presented)


@fault("any-token-served")
def any_token_served() -> None:
    """Any bearer token is served: the check makes sure one is there, never that it is the right one."""
    from implementation.connector_core import auth

    auth.hmac = _AnyTokenDigest  # type: ignore[attr-defined,assignment]


@fault("refusal-not-about-token")
def refusal_not_about_token() -> None:
    """Calls without the right token are refused UNAUTHENTICATED with generic details that never
    mention the token ("authentication required", "access denied")."""
    from implementation.connector_core import auth

    auth.MISSING = "authentication required"
    auth.INVALID = "access denied"


@fault("health-needs-token")
def health_needs_token() -> None:
    """Health checking sits behind the token like the ExchangeService (only reflection is exempt):
    a probe without the token is refused UNAUTHENTICATED."""
    from implementation.connector_core import auth

    auth.EXEMPT_PREFIXES = tuple(p for p in auth.EXEMPT_PREFIXES if "health" not in p)  # type: ignore[assignment]


@fault("right-token-refused")
def right_token_refused() -> None:
    """The expected token is kept as its SHA-256 hex digest (so the process holds no token) but the
    presented token is compared unhashed: every token is refused, the right one too."""
    import hashlib

    from implementation.connector_core import auth

    init = auth.BearerTokenInterceptor.__init__

    def hashed(self: Any, token: str, *args: Any, **kwargs: Any) -> None:
        init(self, token, *args, **kwargs)
        self._expected = hashlib.sha256(token.encode()).hexdigest().encode()

    auth.BearerTokenInterceptor.__init__ = hashed  # type: ignore[method-assign]


def _one_header(values: list[str]) -> str | None:
    """None without a header, "" (refused) for several: the reference's rule on repeated headers."""
    if not values:
        return None
    return values[0] if len(values) == 1 else ""


@fault("scheme-case-sensitive")
def scheme_case_sensitive() -> None:
    """The scheme must be written `Bearer` exactly: `bearer` and `BEARER` are refused."""

    def presented(values: list[str]) -> str | None:
        text = _one_header(values)
        if not text:
            return text
        scheme, space, token = text.partition(" ")
        return token if space and scheme == "Bearer" else ""

    _patch_presented_token(presented)


@fault("scheme-ignored")
def scheme_ignored() -> None:
    """The token is whatever follows the first space, or the whole value without one: the scheme is
    never checked, so a bare token or `Basic <token>` is served."""

    def presented(values: list[str]) -> str | None:
        text = _one_header(values)
        if not text:
            return text
        return text.split(" ", 1)[-1]

    _patch_presented_token(presented)


@fault("loose-whitespace")
def loose_whitespace() -> None:
    """The header is split on any whitespace: a leading or trailing space, or two spaces after the
    scheme, still give the scheme and the token."""

    def presented(values: list[str]) -> str | None:
        text = _one_header(values)
        if not text:
            return text
        words = text.split()
        return words[1] if len(words) == 2 and words[0].lower() == "bearer" else ""

    _patch_presented_token(presented)


@fault("first-authorization-header")
def first_authorization_header() -> None:
    """Only the first `authorization` header is read; the others are ignored, so several headers are
    served when the first holds the right token."""

    def presented(values: list[str]) -> str | None:
        if not values:
            return None
        scheme, space, token = values[0].partition(" ")
        return token if space and scheme.lower() == "bearer" else ""

    _patch_presented_token(presented)


@fault("tls-demands-client-cert")
def tls_demands_client_cert() -> None:
    """With --tls-cert and --tls-key (no --tls-client-ca) the server still demands a client
    certificate, trusting its own certificate as the client CA: no ordinary TLS client is served."""
    from implementation.contract.tls import TlsServerConfig, read_pem

    def mutual_always(self: TlsServerConfig) -> grpc.ServerCredentials:
        key = read_pem(self.key_file, "TLS key")
        cert = read_pem(self.cert_file, "TLS certificate")
        client_ca = read_pem(self.client_ca_file, "TLS client CA") if self.client_ca_file else cert
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=True
        )

    TlsServerConfig.credentials = mutual_always  # type: ignore[method-assign]


TLS_RECORD_HANDSHAKE = 0x16  # plaintext-beside-tls: the first byte of a TLS ClientHello


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        writer.close()


async def _front_connection(conn: Any, tls: Any, backend: tuple[str, int]) -> None:
    """One client of the port: TLS terminated here when it starts with a handshake, passed through
    as it is otherwise; either way relayed to the plaintext server behind."""
    import socket

    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    try:
        first = conn.recv(1, socket.MSG_PEEK)
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        handshake = first[:1] == bytes([TLS_RECORD_HANDSHAKE])
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=tls if handshake else None
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        back_reader, back_writer = await asyncio.open_connection(*backend)
    except (OSError, ConnectionError):  # a failed handshake: that client is not served
        conn.close()
        return
    await asyncio.gather(_pump(reader, back_writer), _pump(back_reader, writer))


@fault("plaintext-beside-tls")
def plaintext_beside_tls() -> None:
    """The port speaks both (a cmux-style front, for local tools that do not do TLS): a client that
    opens with a TLS handshake gets TLS with the configured certificate, any other is served in
    plaintext. The ExchangeService itself listens in plaintext on a private loopback port."""
    import dataclasses
    import socket
    import ssl

    from implementation.connector.cli import ServeSettings
    from implementation.connector_core.server import split_address

    serve = connector_main.serve

    async def serve_both(settings: ServeSettings) -> int:
        if settings.tls is None:
            return await serve(settings)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
        tls.set_alpn_protocols(["h2"])
        with socket.socket() as probe:  # a free loopback port for the server behind the front
            probe.bind(("127.0.0.1", 0))
            backend = ("127.0.0.1", int(probe.getsockname()[1]))
        host, port = split_address(settings.listen)
        front = socket.create_server((host.strip("[]"), port))
        front.setblocking(False)
        loop = asyncio.get_running_loop()
        clients: set[asyncio.Task[None]] = set()

        async def accept() -> None:
            while True:
                conn, _ = await loop.sock_accept(front)
                task = loop.create_task(_front_connection(conn, tls, backend))
                clients.add(task)
                task.add_done_callback(clients.discard)

        acceptor = loop.create_task(accept())
        try:
            behind = dataclasses.replace(settings, tls=None, listen=f"{backend[0]}:{backend[1]}")
            return await serve(behind)
        finally:
            acceptor.cancel()
            for task in list(clients):
                task.cancel()
            await asyncio.gather(acceptor, *clients, return_exceptions=True)
            front.close()

    connector_main.serve = serve_both


@fault("upstream-cancelled-as-cancelled")
def upstream_cancelled_as_cancelled() -> None:
    """A unary call the exchange answers CANCELLED is taken for the call being cancelled: the adapter
    raises asyncio's CancelledError, so the handler ends without a status and the client is never
    answered UNAVAILABLE (it waits until its deadline)."""
    from implementation.client_library.remote_exchange import RemoteError

    get_account, get_positions = GrpcExchange.get_account, GrpcExchange.get_positions

    async def account(self: GrpcExchange) -> pb.Account:
        try:
            return await get_account(self)
        except RemoteError as exc:
            if exc.code is grpc.StatusCode.CANCELLED:
                raise asyncio.CancelledError(str(exc)) from None
            raise

    async def positions(self: GrpcExchange, symbol: str = "") -> list[pb.Position]:
        try:
            return await get_positions(self, symbol)
        except RemoteError as exc:
            if exc.code is grpc.StatusCode.CANCELLED:
                raise asyncio.CancelledError(str(exc)) from None
            raise

    GrpcExchange.get_account = account  # type: ignore[method-assign]
    GrpcExchange.get_positions = positions  # type: ignore[method-assign]


def _patch_reflection(change: Callable[[tuple[str, ...], Any], tuple[tuple[str, ...], Any]]) -> None:
    """Server reflection is enabled with the service names and descriptor pool `change` makes of
    the reference's (its pool: None, the default one)."""
    from grpc_reflection.v1alpha import reflection

    enable = reflection.enable_server_reflection

    def enable_changed(service_names: Sequence[str], server: Any, pool: Any = None) -> None:
        names, changed_pool = change(tuple(service_names), pool)
        enable(names, server, pool=changed_pool)

    reflection.enable_server_reflection = enable_changed


@fault("reflection-needs-token")
def reflection_needs_token() -> None:
    """Server reflection sits behind the token (only health is exempt): grpcurl list without the
    token is refused UNAUTHENTICATED."""
    from implementation.connector_core import auth

    auth.EXEMPT_PREFIXES = tuple(p for p in auth.EXEMPT_PREFIXES if "reflection" not in p)  # type: ignore[assignment]


@fault("reflection-lists-no-health")
def reflection_lists_no_health() -> None:
    """Reflection is enabled with the contract's service (and its own) only: its list leaves out
    grpc.health.v1.Health, which the server still serves."""
    _patch_reflection(lambda names, pool: (tuple(n for n in names if n != "grpc.health.v1.Health"), pool))


STALE_CONTRACT_DROPS = "SubscribePositions"  # reflection-stale-contract: the RPC the older file lacks


def _stale_contract_pool() -> Any:
    """A descriptor pool holding the contract's file as it was before STALE_CONTRACT_DROPS was added
    (and the files it imports)."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any, edit: Callable[[Any], None] | None = None) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        if edit is not None:
            edit(proto)
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(file.name)

    def drop_rpc(proto: Any) -> None:
        for service in proto.service:
            kept = [m for m in service.method if m.name != STALE_CONTRACT_DROPS]
            del service.method[:]
            service.method.extend(kept)

    add(pb.DESCRIPTOR, drop_rpc)
    return pool


@fault("reflection-stale-contract")
def reflection_stale_contract() -> None:
    """Reflection answers from a descriptor set built from an older copy of the contract, from
    before SubscribePositions: the file describing ExchangeService names three RPCs."""
    _patch_reflection(lambda names, pool: (names, _stale_contract_pool()))


# ------------------------------------------------------------------------------------ symbols, requests, metrics


@fault("empty-symbol-refused")
def empty_symbol_refused() -> None:
    """The symbol is required: an empty one is refused INVALID_ARGUMENT instead of meaning every
    symbol (GetPositions and SubscribePositions)."""
    from implementation.connector_core import server

    def required(symbol: str) -> str:
        if not symbol:
            raise InvalidRequest(
                "symbol '' is not a valid instrument name (a symbol is required, e.g. 'BTCUSDT')"
            )
        return check_symbol(symbol)

    server.check_symbol = required  # type: ignore[attr-defined]


@fault("unknown-fields-refused")
def unknown_fields_refused() -> None:
    """Requests are parsed strictly: one carrying a field the contract does not know (a newer
    client's) is refused INVALID_ARGUMENT as malformed instead of served."""
    from google.protobuf import unknown_fields

    from implementation.connector_core import service_handlers

    parser = service_handlers._parser

    def strict(method: str, kind: Any) -> Callable[[bytes], Any]:
        parse = parser(method, kind)

        def parse_strictly(data: bytes) -> Any:
            request = parse(data)
            if not isinstance(request, service_handlers.Malformed) and len(
                unknown_fields.UnknownFieldSet(request)
            ):
                return service_handlers.Malformed(method, "fields the contract does not define")
            return request

        return parse_strictly

    service_handlers._parser = strict


@fault("data-age-metric-in-ms")
def data_age_metric_in_ms() -> None:
    """exchange_connector_data_age_seconds is filled in milliseconds (the header's unit): a view
    0.3 s old reads 300 "seconds"."""
    from prometheus_client.samples import Sample

    from implementation.connector.metrics import HubCollector

    collect = HubCollector.collect

    def in_ms(self: HubCollector) -> Any:
        for metric in collect(self):
            if metric.name.endswith("data_age_seconds"):
                metric.samples = [
                    Sample(s.name, s.labels, s.value * 1000, s.timestamp, s.exemplar) for s in metric.samples
                ]
            yield metric

    HubCollector.collect = in_ms  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ the hub: drops, leaks, gauge


def _overflowing(hub: Hub, topic: str) -> list[Subscription]:
    """The subscribers of `topic` whose queue is full: the next update overflows them."""
    return [sub for sub in hub._subscribers[topic] if sub.queued >= sub.capacity]


def _lagging(hub: Hub, topic: str, now: float) -> list[Subscription]:
    """The subscribers of `topic` whose oldest queued update waited past the lag bound (none while
    a stall of the connector's own loop excuses the wait)."""
    if hub.loop_stalls.excused(now):
        return []
    return [sub for sub in hub._subscribers[topic] if sub.lag(now) > hub._max_lag]


def _hand_over(sub: Subscription, message: pb.Account) -> None:
    """Queue `message` on a subscription that has already ended: its stream sends it before the status."""
    sub._items.append(message)
    sub._stamps.append(time.monotonic())


@fault("lag-drop-parting-update")
def lag_drop_parting_update() -> None:
    """A subscriber dropped for lag is handed the newest account before its status ("it ends on the
    newest state"): after the updates its transport took comes a jump ahead."""
    drop = Hub._drop

    def drop_with_newest(self: Hub, sub: Subscription, now: float) -> None:
        lagged = sub.queued < sub.capacity
        drop(self, sub, now)
        if lagged and sub.topic == ACCOUNT and self._account is not None:
            _hand_over(sub, self._account)

    Hub._drop = drop_with_newest  # type: ignore[method-assign]


@fault("lag-drop-uncounted")
def lag_drop_uncounted() -> None:
    """exchange_connector_subscribers_dropped_total counts the subscribers dropped for a full queue
    only; one dropped for lag is ended and logged but never counted."""
    drop = Hub._drop

    def uncounted(self: Hub, sub: Subscription, now: float) -> None:
        lagged = sub.queued < sub.capacity and sub.lag(now) > self._max_lag
        drop(self, sub, now)
        if lagged:
            self.stats[sub.topic].dropped -= 1

    Hub._drop = uncounted  # type: ignore[method-assign]


@fault("drop-logged-at-info")
def drop_logged_at_info() -> None:
    """subscriber_dropped is logged at info level, like every other subscriber event, not warning."""
    from implementation.connector_core import hub

    log = hub.log_event  # type: ignore[attr-defined]

    def at_info(
        logger: logging.Logger, event: str, *, level: int | str = logging.INFO, **fields: Any
    ) -> None:
        log(logger, event, level=logging.INFO if event == "subscriber_dropped" else level, **fields)

    hub.log_event = at_info  # type: ignore[attr-defined]


@fault("lag-drop-loses-update")
def lag_drop_loses_update() -> None:
    """The fan-out drops the subscribers it finds behind (past the lag bound or at the queue bound)
    and returns (the watchdog drops nobody): the update that found one of them behind reaches no
    other subscriber either."""
    publish = Hub.publish_account

    def publish_account(self: Hub, account: pb.Account) -> None:
        now = time.monotonic()
        behind = [
            sub
            for sub in self._subscribers[ACCOUNT]
            if sub in _lagging(self, ACCOUNT, now) or sub.queued >= sub.capacity
        ]
        if behind:
            for sub in behind:
                self._drop(sub, now)
            return
        publish(self, account)

    Hub.publish_account = publish_account  # type: ignore[method-assign]
    Hub.drop_lagging = lambda self: 0  # type: ignore[method-assign]


@fault("dropped-stay-in-gauge")
def dropped_stay_in_gauge() -> None:
    """exchange_connector_subscribers is a count kept beside the registry: up when a subscriber is
    added, down when its stream's exit finds it registered. A dropped subscriber was unregistered
    by the drop, so its exit never brings the count down."""
    held: dict[str, int] = {ACCOUNT: 0, POSITIONS: 0}
    add, remove = Hub._add, Hub._remove

    def counted_add(self: Hub, sub: Subscription) -> None:
        add(self, sub)
        held[sub.topic] += 1

    def counted_remove(self: Hub, sub: Subscription, exc: BaseException | None) -> None:
        if sub in self._subscribers[sub.topic]:
            held[sub.topic] -= 1
        remove(self, sub, exc)

    def subscriber_count(self: Hub, topic: str) -> int:
        return held[topic]

    Hub._add = counted_add  # type: ignore[method-assign]
    Hub._remove = counted_remove  # type: ignore[method-assign]
    Hub.subscriber_count = subscriber_count  # type: ignore[method-assign]


@fault("vanished-client-kept")
def vanished_client_kept() -> None:
    """A stream whose handler is cancelled (its client vanished) is not removed: cancellation is
    taken for the server's own shutdown, which ends every subscriber anyway."""
    remove = Hub._remove

    def remove_unless_cancelled(self: Hub, sub: Subscription, exc: BaseException | None) -> None:
        if not isinstance(exc, asyncio.CancelledError):
            remove(self, sub, exc)

    Hub._remove = remove_unless_cancelled  # type: ignore[method-assign]


@fault("client-gone-not-logged")
def client_gone_not_logged() -> None:
    """A subscriber whose client vanished is removed silently: subscriber_removed is logged only for
    streams the server ended."""
    remove = Hub._remove

    def remove_quietly(self: Hub, sub: Subscription, exc: BaseException | None) -> None:
        if not isinstance(exc, asyncio.CancelledError):
            remove(self, sub, exc)
            return
        self._subscribers[sub.topic].pop(sub, None)
        sub.end(grpc.StatusCode.CANCELLED, "client gone", discard=True)

    Hub._remove = remove_quietly  # type: ignore[method-assign]


def _per_subscriber(acquire: Callable[[], Callable[[], None]]) -> None:
    """Each subscriber holds what `acquire` returns the release of; it is released when the server
    ends the stream, never when the handler is cancelled (a client that vanished)."""
    held: dict[Subscription, Callable[[], None]] = {}
    add, remove = Hub._add, Hub._remove

    def add_holding(self: Hub, sub: Subscription) -> None:
        add(self, sub)
        held[sub] = acquire()

    def remove_releasing(self: Hub, sub: Subscription, exc: BaseException | None) -> None:
        remove(self, sub, exc)
        if not isinstance(exc, asyncio.CancelledError) and (release := held.pop(sub, None)) is not None:
            release()

    Hub._add = add_holding  # type: ignore[method-assign]
    Hub._remove = remove_releasing  # type: ignore[method-assign]


@fault("thread-per-vanished-client")
def thread_per_vanished_client() -> None:
    """Every subscriber gets a helper thread that waits for its stream's end; a client that vanishes
    leaves its thread waiting forever."""
    import threading

    def start_helper() -> Callable[[], None]:
        done = threading.Event()
        threading.Thread(target=done.wait, name="subscriber-helper", daemon=True).start()
        return done.set

    _per_subscriber(start_helper)


@fault("fd-per-vanished-client")
def fd_per_vanished_client() -> None:
    """Every subscriber gets a wake-up socket pair; a client that vanishes leaves both open."""
    import socket

    def open_pair() -> Callable[[], None]:
        first, second = socket.socketpair()

        def close() -> None:
            first.close()
            second.close()

        return close

    _per_subscriber(open_pair)


SEND_BUFFER_BYTES = 1 << 20  # memory-per-vanished-client: each subscriber's batching buffer


@fault("memory-per-vanished-client")
def memory_per_vanished_client() -> None:
    """Every subscriber gets a 1 MiB send buffer kept in a registry; a client that vanishes leaves
    its buffer there."""
    buffers: list[bytearray] = []

    def allocate() -> Callable[[], None]:
        buffer = bytearray(b"\x5a") * SEND_BUFFER_BYTES  # written, so it is resident
        buffers.append(buffer)
        return lambda: buffers.remove(buffer)

    _per_subscriber(allocate)


@fault("metrics-on-ipv6-loopback")
def metrics_on_ipv6_loopback() -> None:
    """The metrics endpoint listens on the IPv6 loopback (::1, what `localhost` resolves to first),
    whatever host --metrics-listen names: nothing answers on 127.0.0.1:{metrics_port}."""
    from implementation.connector.metrics import MetricsServer
    from implementation.connector_core.server import split_address

    async def start(self: MetricsServer, address: str) -> int:
        _, port = split_address(address)
        self.port = await self._http.start("::1", port)
        return self.port

    MetricsServer.start = start  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ the upstream subscriptions

UPSTREAM_POLL_S = 0.02  # how often the upstream-subscription faults look at the subscriber count
IDLE_CLOSE_S = 0.2  # upstream-closed-when-idle: an upstream subscription nobody uses this long is closed
StreamRunner = Callable[[Any, Callable[[Any], None]], Any]


def _hub_of(callback: Callable[[Any], None]) -> Hub:
    """The hub whose fan-out `callback` is (the hub passes its bound publish method)."""
    hub = getattr(callback, "__self__", None)
    if not isinstance(hub, Hub):
        raise RuntimeError("an upstream stream's callback is not a hub's publish method")
    return hub


def _patch_upstream_streams(wrap: Callable[[StreamRunner, str], StreamRunner]) -> None:
    """Both upstream streams of the threaded exchange adapter run through `wrap(run, topic)`."""
    from implementation.adapters.threaded import ThreadedExchange

    ThreadedExchange.run_account_stream = wrap(ThreadedExchange.run_account_stream, ACCOUNT)  # type: ignore[method-assign,assignment]
    ThreadedExchange.run_position_stream = wrap(ThreadedExchange.run_position_stream, POSITIONS)  # type: ignore[method-assign,assignment]


async def _until_subscribed(hub: Hub, topic: str) -> None:
    # the hub signals no event for a first subscriber: the faults look at its count
    while hub.subscriber_count(topic) == 0:  # noqa: ASYNC110
        await asyncio.sleep(UPSTREAM_POLL_S)


async def _cancelled(task: asyncio.Future[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@fault("upstream-on-demand")
def upstream_on_demand() -> None:
    """An upstream subscription is opened with its topic's first subscriber, not at start: a
    connector nobody uses holds none."""

    def wrap(run: StreamRunner, topic: str) -> StreamRunner:
        async def on_demand(self: Any, callback: Callable[[Any], None]) -> None:
            await _until_subscribed(_hub_of(callback), topic)
            await run(self, callback)

        return on_demand

    _patch_upstream_streams(wrap)


@fault("upstream-closed-when-idle")
def upstream_closed_when_idle() -> None:
    """An upstream subscription that no client has used for IDLE_CLOSE_S is closed (to spare the
    exchange), and opened again with its topic's next subscriber."""

    def wrap(run: StreamRunner, topic: str) -> StreamRunner:
        async def closed_when_idle(self: Any, callback: Callable[[Any], None]) -> None:
            hub = _hub_of(callback)
            while True:
                stream = asyncio.ensure_future(run(self, callback))
                used = time.monotonic()
                try:
                    while not stream.done():
                        await asyncio.wait({stream}, timeout=UPSTREAM_POLL_S)
                        if hub.subscriber_count(topic):
                            used = time.monotonic()
                        elif time.monotonic() - used > IDLE_CLOSE_S:
                            break
                finally:
                    if not stream.done():
                        await _cancelled(stream)
                if not stream.cancelled():
                    return stream.result()  # type: ignore[no-any-return]
                await _until_subscribed(hub, topic)

        return closed_when_idle

    _patch_upstream_streams(wrap)


@fault("upstream-reopened-for-first-subscriber")
def upstream_reopened_for_first_subscriber() -> None:
    """A topic's first subscriber makes the connector open its upstream subscription again, so the
    client starts from a fresh snapshot: the exchange sees a second subscription while it stays up."""
    refresh: dict[str, asyncio.Event] = {}
    add = Hub._add

    def add_refreshing(self: Hub, sub: Subscription) -> None:
        first = self.subscriber_count(sub.topic) == 0
        add(self, sub)
        if first and sub.topic in refresh:
            refresh[sub.topic].set()

    def wrap(run: StreamRunner, topic: str) -> StreamRunner:
        async def reopened(self: Any, callback: Callable[[Any], None]) -> None:
            while True:
                wanted = refresh[topic] = asyncio.Event()
                stream = asyncio.ensure_future(run(self, callback))
                waiting = asyncio.ensure_future(wanted.wait())
                try:
                    await asyncio.wait({stream, waiting}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await _cancelled(waiting)
                    if not stream.done():
                        await _cancelled(stream)
                if not stream.cancelled():
                    return stream.result()  # type: ignore[no-any-return]

        return reopened

    Hub._add = add_refreshing  # type: ignore[method-assign]
    _patch_upstream_streams(wrap)


# ------------------------------------------------------------------------------------ symbols, freshness, hangs, start-up


@fault("refused-symbol-held")
def refused_symbol_held() -> None:
    """SubscribePositions registers its subscriber before it checks the symbol (so no update is
    missed meanwhile); a refused symbol aborts the call without unregistering it."""

    async def subscribe_positions(
        self: ExchangeService, request: pb.SubscribePositionsRequest, context: Any
    ) -> None:
        hub: Hub = self._hub
        early = hub.subscribe(POSITIONS, symbol=request.symbol, peer=context.peer())
        entered: Subscription | None = early
        try:
            await early.__aenter__()
        except SubscriptionEnded:
            entered = None  # not serving: the stream below refuses it the reference's way
        try:
            symbol = check_symbol(request.symbol)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if entered is not None:
            await entered.__aexit__(None, None, None)
        await self._stream(POSITIONS, symbol, context)

    ExchangeService.SubscribePositions = subscribe_positions  # type: ignore[method-assign]


@fault("unchanged-liveness-answer-ignored")
def unchanged_liveness_answer_ignored() -> None:
    """The liveness read's answer counts as a sign of life only when the account changed: a quiet
    market's answer, the account as it was, leaves the data age growing until the view is stale."""

    async def probe(self: Hub) -> None:
        self.probes += 1
        try:
            answer = await self.exchange.get_account()
        except Exception:
            return
        if answer != self._account:
            self.freshness.caught_up()

    Hub._probe = probe  # type: ignore[method-assign]


async def _forever() -> None:
    await asyncio.Event().wait()


GIVEN_UP_S = 1e6  # hung-upstream-given-up: the wait before the next attempt, once given up


@fault("hung-upstream-given-up")
def hung_upstream_given_up() -> None:
    """An upstream the watchdog found hung is given up for good: the connector never tries it again
    and stays NOT_SERVING after the exchange answers again."""
    from implementation.contract.backoff import ReconnectPolicy

    run_upstream = Hub._run_upstream

    async def give_up_when_hung(self: Hub) -> str:
        reason = await run_upstream(self)
        if self._hung is not None:  # the supervisor's next attempt waits (all but) forever
            log_event(HUB_LOG, "upstream_given_up", level=logging.ERROR, reason=reason)
            self.backoff = ReconnectPolicy(initial_backoff=GIVEN_UP_S, max_backoff=GIVEN_UP_S)
        return reason

    Hub._run_upstream = give_up_when_hung  # type: ignore[method-assign]


@fault("account-stream-lost-after-hang")
def account_stream_lost_after_hang() -> None:
    """After the watchdog gave a hung upstream up, the reconnection waits for the frozen account
    subscription to be acknowledged closed before opening a new one, which a thawed exchange never
    does: SERVING again, but no account update reaches anyone."""
    run_upstream = Hub._run_upstream

    async def never_opened(callback: Callable[[pb.Account], None]) -> None:
        await _forever()

    async def run_after_hang(self: Hub) -> str:
        if self.hung_upstreams:
            self.exchange.run_account_stream = never_opened  # type: ignore[method-assign]
        return await run_upstream(self)

    Hub._run_upstream = run_after_hang  # type: ignore[method-assign]


@fault("listen-after-upstream")
def listen_after_upstream() -> None:
    """The connector connects to its upstream before it listens: while the exchange does not answer,
    its port stays closed (health cannot be asked)."""
    start = ExchangeServer.start

    async def start_when_connected(self: ExchangeServer, address: str = "127.0.0.1:0") -> int:
        await self.hub.start()
        await self.hub.wait_serving(timeout=float("inf"))
        port = await start(self, address)
        self.hub._healthy = False  # start() set health NOT_SERVING: tell it the hub's state again
        await self.hub._tell_health()
        return port

    ExchangeServer.start = start_when_connected  # type: ignore[method-assign]


@fault("empty-account-before-upstream")
def empty_account_before_upstream() -> None:
    """Until its upstream first connects, the connector's view is an empty Account ("zero until the
    first update"): GetAccount answers it OK instead of UNAVAILABLE."""
    connected: set[int] = set()
    set_serving, current = Hub._set_serving, Hub.current_account

    async def note_serving(self: Hub, serving: bool) -> None:
        if serving:
            connected.add(id(self))
        await set_serving(self, serving)

    def current_account(self: Hub) -> pb.Account | None:
        if id(self) not in connected:
            return pb.Account()
        return current(self)

    Hub._set_serving = note_serving  # type: ignore[method-assign]
    Hub.current_account = current_account  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ stalls and signals


@fault("stall-skips-backlog")
def stall_skips_backlog() -> None:
    """For the lag bound after a stall of its own, the connector catches up by replacing what waits
    for each subscriber with the newest update: the backlog the stall left is skipped, not sent."""
    publish = Hub.publish_account

    def publish_account(self: Hub, account: pb.Account) -> None:
        if self.loop_stalls.excused(time.monotonic()):
            for sub in self._subscribers[ACCOUNT]:
                sub._items.clear()
                sub._stamps.clear()
        publish(self, account)

    Hub.publish_account = publish_account  # type: ignore[method-assign]


@fault("sigterm-journal-deadlock")
def sigterm_journal_deadlock() -> None:
    """Each stop signal is noted in a shutdown journal under a lock that the shutdown itself holds
    while it runs (writing the journal out first takes half a second): a SIGTERM landing during the
    shutdown waits in its handler, on the main thread, for a lock only that thread can release. One
    SIGTERM stops it; more hang it."""
    import threading

    journal: list[int] = []
    lock = threading.Lock()
    stop = ExchangeServer.stop

    def stop_event() -> asyncio.Event:
        event = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(number: int, _frame: Any) -> None:
            with lock:
                journal.append(number)
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

        for number in stop_signals.STOP_SIGNALS:
            signal.signal(number, on_signal)
        return event

    async def journalled_stop(self: ExchangeServer, grace: float | None = None) -> None:
        with lock:  # the journal stays consistent while the shutdown runs
            await asyncio.sleep(0.5)  # the journal written out first (a slow disk)
            await stop(self, grace)

    connector_main.stop_event = stop_event  # type: ignore[attr-defined]
    ExchangeServer.stop = journalled_stop  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ service, health and upstream wiring


@fault("service-under-old-package")
def service_under_old_package() -> None:
    """The ExchangeService is registered under the contract's pre-v1 package name
    (`opensqt.exchange.ExchangeService`, from an old copy of the proto): health and reflection are
    served as before, every call of the v1 contract answers UNIMPLEMENTED."""
    from implementation.connector_core import server as server_module
    from implementation.connector_core import service_handlers
    from implementation.connector_core.service_handlers import CallStats

    add_service = service_handlers.add_service

    def add_under_old_name(servicer: Any, server: grpc.aio.Server, stats: CallStats) -> None:
        name = service_handlers.SERVICE_NAME
        service_handlers.SERVICE_NAME = "opensqt.exchange.ExchangeService"
        try:
            add_service(servicer, server, stats)
        finally:
            service_handlers.SERVICE_NAME = name

    server_module.add_service = add_under_old_name  # type: ignore[attr-defined]


@fault("no-health-service")
def no_health_service() -> None:
    """The health servicer is kept up to date (SERVING, NOT_SERVING) but never added to the server:
    `grpc.health.v1.Health` answers UNIMPLEMENTED on the connector's port."""
    from implementation.connector_core import server

    server.health_pb2_grpc.add_HealthServicer_to_server = (  # type: ignore[attr-defined]
        lambda servicer, grpc_server: None
    )


@fault("demo-account-until-first-update")
def demo_account_until_first_update() -> None:
    """Until the exchange's first account update, GetAccount answers the built-in simulator's demo
    account (a development fallback left in) instead of asking the upstream: data of its own."""
    from implementation.adapters.sim import SimExchange
    from implementation.connector_core.server import DATA_AGE_KEY

    demo = SimExchange(interval=None)
    get_account = ExchangeService.GetAccount

    async def demo_first(self: ExchangeService, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        hub: Hub = self._hub
        if hub.serving and hub.stale_reason() is None and hub.current_account() is None:
            await context.send_initial_metadata(((DATA_AGE_KEY, "0"),))
            return demo.account()
        return await get_account(self, request, context)

    ExchangeService.GetAccount = demo_first  # type: ignore[method-assign]


@fault("positions-stream-own-connection")
def positions_stream_own_connection() -> None:
    """The upstream positions stream is read over a channel of its own (so a busy account stream
    never holds it up): a second connection to the exchange, since grpc shares a connection only
    between channels of the same options."""
    import copy

    from implementation.client_library.remote_exchange import RemoteExchange

    close = GrpcExchange.close
    own: dict[int, RemoteExchange] = {}

    def positions_remote(exchange: GrpcExchange) -> RemoteExchange:
        remote = own.get(id(exchange))
        if remote is None:
            remote = copy.copy(exchange._remote)
            remote._channel, remote._stub, remote._handles = None, None, set()
            remote._channel_options = [*remote._channel_options, ("grpc.use_local_subchannel_pool", 1)]
            own[id(exchange)] = remote
        return remote

    async def run_position_stream(self: GrpcExchange, callback: Any) -> None:
        await positions_remote(self).relay_positions(callback, "")
        raise self._ended("SubscribePositions")

    async def close_both(self: GrpcExchange) -> None:
        remote = own.pop(id(self), None)
        if remote is not None:
            await remote.close()
        await close(self)

    GrpcExchange.run_position_stream = run_position_stream  # type: ignore[method-assign]
    GrpcExchange.close = close_both  # type: ignore[method-assign]


@fault("pre-outage-positions")
def pre_outage_positions() -> None:
    """GetPositions answers are kept per symbol, and after an outage the connector answers them (a
    warm start) until the positions stream sends its first update, whatever the exchange holds now."""
    kept: dict[str, pb.GetPositionsResponse] = {}
    served: set[int] = set()
    warm = [False]
    set_serving, publish = Hub._set_serving, Hub.publish_position
    get_positions = ExchangeService.GetPositions

    async def note(self: Hub, serving: bool) -> None:
        if serving:
            served.add(id(self))
        elif id(self) in served:
            warm[0] = True
        await set_serving(self, serving)

    def publish_position(self: Hub, position: pb.Position) -> None:
        warm[0] = False
        publish(self, position)

    async def warm_start(
        self: ExchangeService, request: pb.GetPositionsRequest, context: Any
    ) -> pb.GetPositionsResponse:
        hub: Hub = self._hub
        if warm[0] and hub.serving and request.symbol in kept:
            return kept[request.symbol]
        answer: pb.GetPositionsResponse = await get_positions(self, request, context)
        kept[request.symbol] = answer
        return answer

    Hub._set_serving = note  # type: ignore[method-assign]
    Hub.publish_position = publish_position  # type: ignore[method-assign]
    ExchangeService.GetPositions = warm_start  # type: ignore[method-assign]


@fault("stale-refusal-unexplained")
def stale_refusal_unexplained() -> None:
    """GetAccount refuses a stale view with the generic upstream message ("the upstream exchange is
    unavailable; retry shortly"), naming neither the data age nor the lag."""
    get_account = ExchangeService.GetAccount

    async def generic(self: ExchangeService, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        if self._hub.stale_reason() is not None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the upstream exchange is unavailable; retry shortly"
            )
        return await get_account(self, request, context)

    ExchangeService.GetAccount = generic  # type: ignore[method-assign]


@fault("lag-metric-reads-data-age")
def lag_metric_reads_data_age() -> None:
    """exchange_connector_upstream_lag_seconds is filled with the data age (the gauge above it,
    copied): while updates flow it reads a few tenths of a second however far the read trails."""
    from prometheus_client.samples import Sample

    from implementation.connector.metrics import HubCollector

    collect = HubCollector.collect

    def lag_is_age(self: HubCollector) -> Any:
        age = 0.0
        for metric in collect(self):
            if metric.name.endswith("data_age_seconds"):
                age = metric.samples[0].value
            elif metric.name.endswith("upstream_lag_seconds"):
                metric.samples = [
                    Sample(s.name, s.labels, age, s.timestamp, s.exemplar) for s in metric.samples
                ]
            yield metric

    HubCollector.collect = lag_is_age  # type: ignore[method-assign]


@fault("auth-before-parse")
def auth_before_parse() -> None:
    """A call without the right token is refused UNAUTHENTICATED before its request is looked at:
    a malformed request without a token gets UNAUTHENTICATED, not INVALID_ARGUMENT."""
    from implementation.connector_core import auth

    def refusal(handler: Any, details: str, stats: Any) -> Any:
        async def refuse(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
        return grpc.unary_unary_rpc_method_handler(refuse, **serializers)

    auth._refusal = refusal


@fault("token-refusals-unlogged")
def token_refusals_unlogged() -> None:
    """Refused tokens are counted in exchange_connector_auth_rejected_total but never logged."""
    from implementation.connector_core import auth
    from implementation.connector_core.auth import BearerTokenInterceptor

    def refuse(self: BearerTokenInterceptor, handler: Any, details: Any, reason: str, message: str) -> Any:
        self.stats.auth_rejected[reason] += 1
        return auth._refusal(handler, message, self.stats)

    BearerTokenInterceptor._refuse = refuse  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------ the program


def main(argv: Sequence[str] | None = None) -> int:
    rest = fault.apply_from(sys.argv[1:] if argv is None else argv)
    if rest is None:
        return 2
    if rest[:1] != ["serve"]:
        rest = ["serve", *rest]
    return connector_main.main(rest)


__all__ = ["FAULTS", "floated", "main"]

if __name__ == "__main__":
    sys.exit(main())
