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
    """The first SIGTERM starts the graceful shutdown; a second one during it exits at once with code 1."""
    stop_signals.STOP_SIGNALS = (signal.SIGINT,)  # type: ignore[assignment]
    serve = connector_main.serve
    seen = itertools.count()

    def on_sigterm() -> None:
        if next(seen) == 0:
            os.kill(os.getpid(), signal.SIGINT)  # the reference's own graceful path
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


@fault("no-overload-shedding")
def no_overload_shedding() -> None:
    """The connector does not measure how far its upstream read trails the exchange: under overload
    nobody is shed or refused, and every subscriber drifts into the past together."""
    from implementation.connector_core.freshness import Freshness

    Freshness.account_read = lambda self, account: self.heard()  # type: ignore[method-assign]


def _stamp_s(account: pb.Account) -> float:
    return account.updated_at.seconds + account.updated_at.nanos * 1e-9


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
            self.exchange.__dict__["ready_is_answering"] = True

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
