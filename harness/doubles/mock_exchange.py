"""The spec's mock exchange (§4.3) served over gRPC as an ExchangeService.

A test controls it from its own thread (trigger updates, set the data the unary calls return,
make calls fail, end streams) while the server runs on a dedicated thread with its own event
loop, so it keeps serving even while the test blocks. A connector running as a separate program
reaches it through its `grpc` exchange adapter; the mock counts the distinct peers that called it
("only ONE exchange connection") and the streams open per topic. It also serves grpc.health.v1
(SERVING), so a launcher can probe it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from harness.doubles.freeze import FreezableRelay
from harness.doubles.mock_handlers import (
    TOPICS,
    MockBook,
    MockExchangeService,
    StampClock,
    StreamEnd,
    check_topic,
    copy_message,
)
from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

SERVICE_NAME = "opensqt.exchange.v1.ExchangeService"
UNARY_METHODS = ("GetAccount", "GetPositions")
# A client's keepalive pings are welcome at any rate, with or without data in flight: the mock
# never tells a client off for pinging (real exchanges may; the connector's rules say how it copes).
SERVER_OPTIONS = (
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)

__all__ = ["TOPICS", "MockExchangeServer", "MockExchangeViolation", "spec_account", "spec_positions"]


class MockExchangeViolation(AssertionError):
    """Something went wrong inside the mock exchange while a test used it."""


class MockExchangeServer:
    """An ExchangeService whose data and failures the test controls; every method is thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        *,
        freezable: bool = False,
    ) -> None:
        self.host = host
        self.port = port  # the bound port once started; a restart binds the same one
        self._credentials = credentials  # TLS (server certificate, optionally client auth); None: plaintext
        self._book = MockBook()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._grace = 1.0
        # freezable: clients reach the server through a relay that freeze() stops (harness/doubles/freeze.py)
        self._freezable = freezable
        self._relay: FreezableRelay | None = None
        self.data_set = False  # set_account or set_positions was called (since reset_data)

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout: float = 10.0) -> MockExchangeServer:
        """Serve on a new thread; returns once the port is bound. Harmless when already started."""
        if self._thread is not None:
            return self
        started = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._run, args=(started, failure), name="mock-exchange", daemon=True
        )
        thread.start()
        if not started.wait(timeout):
            raise MockExchangeViolation(f"mock exchange did not start within {timeout} s on {self.address}")
        if failure:
            thread.join()
            hint = " (is the port in use?)" if "bind" in str(failure[0]).lower() else ""
            raise RuntimeError(
                f"mock exchange cannot serve on {self.address}{hint}: {failure[0]}"
            ) from failure[0]
        self._thread = thread
        return self

    def stop(self, grace: float = 1.0) -> None:
        """End every open stream with UNAVAILABLE, stop serving and join the thread; idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        self._grace = grace
        try:
            loop.call_soon_threadsafe(stopping.set)
        except RuntimeError:  # the loop already ended on its own
            pass
        thread.join(grace + 10.0)
        if thread.is_alive():
            self._book.record(f"server thread still running {grace + 10.0} s after stop()")
        with self._book.lock:
            self._thread = self._loop = self._stopping = None

    def restart(self) -> None:
        """Stop, then serve again on the same port (data and counters are kept)."""
        self.stop()
        self.start()

    def __enter__(self) -> MockExchangeServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(loop, started))
        except BaseException as error:
            if started.is_set():  # failed after start-up: the fixture reports it
                self._book.record(f"server loop failed: {error!r}")
            else:
                failure.append(error)
                started.set()
        finally:
            try:
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_ExchangeServiceServicer_to_server(MockExchangeService(self._book), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        try:
            bind = f"{self.host}:0" if self._freezable else self.address
            if self._credentials is None:
                port = server.add_insecure_port(bind)
            else:
                port = server.add_secure_port(bind, self._credentials)
            await server.start()
            if self._freezable:
                self._relay = FreezableRelay(port)
                port = await self._relay.start(self.host, self.port)
            self.port = port
        except BaseException:
            if self._relay is not None:
                await self._relay.stop()
                self._relay = None
            await server.stop(None)
            raise
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        with self._book.lock:
            self._loop, self._stopping = loop, asyncio.Event()
        started.set()
        try:
            await self._stopping.wait()
        finally:
            await health_servicer.enter_graceful_shutdown()
            self._book.end_all(grpc.StatusCode.UNAVAILABLE, "mock exchange stopping")
            if self._relay is not None:
                await self._relay.stop()
                self._relay = None
            await server.stop(self._grace)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback` on the server's loop after everything posted before (caller holds the lock)."""
        if self._loop is None:
            return  # not serving: the state changed, no stream is open to tell
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed meanwhile: no stream left to tell
            pass

    # ------------------------------------------------------------------ control

    def set_account(self, account: pb.Account) -> None:
        """What GetAccount returns from now on."""
        with self._book.lock:
            self._book.account = copy_message(account)
            self.data_set = True

    def set_positions(self, positions: Iterable[pb.Position]) -> None:
        """What GetPositions returns from now on (filtered by the request's symbol)."""
        with self._book.lock:
            self._book.positions = [copy_message(position) for position in positions]
            self.data_set = True

    def trigger_account_update(self, account: pb.Account) -> None:
        """Send `account` to every open SubscribeAccount stream; GetAccount returns it from now on."""
        message = copy_message(account)
        with self._book.lock:
            self._book.account = message
            self._post(self._book.deliver, "account", message)

    def trigger_position_update(self, position: pb.Position) -> None:
        """Send `position` to every open SubscribePositions stream that wants its symbol. It replaces
        the position of that symbol in what GetPositions returns (a new symbol is added at the end)."""
        message = copy_message(position)
        with self._book.lock:
            positions = self._book.positions
            index = next((i for i, p in enumerate(positions) if p.symbol == message.symbol), None)
            if index is None:
                self._book.positions = [*positions, message]
            else:
                self._book.positions = [*positions[:index], message, *positions[index + 1 :]]
            self._post(self._book.deliver, "positions", message)

    def stamp_on_send(self, enabled: bool = True, *, offset: float = 0.0, pace: float = 1.0) -> None:
        """Stamp each account's updated_at as the mock writes it to a stream (the exchange's send
        time), instead of keeping the time the test triggered it: latency then excludes the
        harness's hand-off from the triggering thread to the mock's loop.

        `offset`: seconds every stamp is moved, an exchange clock ahead of the connector's (> 0) or
        behind it (< 0). `pace`: how fast the stamps advance against real time from this call on;
        below 1 each stamp falls further behind its send time (by 1 - pace seconds a second), as
        when the reader trails what the exchange writes, while the updates keep flowing."""
        if pace <= 0:
            raise ValueError(f"pace must be > 0 (stamps that advance), got {pace}")
        clock = StampClock(round(offset * 1e9), pace, time.time_ns()) if enabled else None
        with self._book.lock:
            self._book.stamp_on_send = clock

    def fail_calls(self, code: grpc.StatusCode | None, details: str = "") -> None:
        """While set, unary calls and new streams fail with `code`; None serves normally again."""
        if code is grpc.StatusCode.OK:
            raise ValueError("fail_calls needs an error status code, got OK (None stops failing)")
        with self._book.lock:
            self._book.failure = (
                None if code is None else StreamEnd(code, details or f"mock exchange: {code.name}")
            )

    def end_streams(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, details: str = "") -> None:
        """End every open stream with this status, after the updates already triggered (OK: end cleanly)."""
        with self._book.lock:
            self._post(
                self._book.end_all, code, details or f"mock exchange ended the stream with {code.name}"
            )

    def freeze(self) -> None:
        """Stop answering anything, as a process stopped with SIGSTOP: no bytes in or out on any
        connection (HTTP/2 pings included), no new connection. Needs MockExchangeServer(freezable=True)."""
        self._relay_call("freeze")

    def thaw(self) -> None:
        """Undo freeze(): the bytes held flow again, in order."""
        self._relay_call("thaw")

    def _relay_call(self, name: str) -> None:
        if not self._freezable:
            raise MockExchangeViolation(f"{name}() needs MockExchangeServer(freezable=True)")
        done = threading.Event()
        with self._book.lock:
            loop, relay = self._loop, self._relay
        if loop is None or relay is None:
            raise MockExchangeViolation(f"{name}(): the mock exchange is not serving")

        def apply() -> None:
            getattr(relay, name)()
            done.set()

        loop.call_soon_threadsafe(apply)
        if not done.wait(5.0):
            raise MockExchangeViolation(f"{name}(): the mock exchange's loop did not answer within 5 s")

    def stall_calls(self, enabled: bool = True) -> None:
        """While set, GetAccount and GetPositions never answer: each waits until its client cancels it or
        its deadline passes (stalled_calls() and ended_stalls() count both sides)."""
        with self._book.lock:
            self._book.stall = enabled

    def hold_calls(self, method: str = "GetPositions", enabled: bool = True) -> None:
        """While set, calls of `method` (GetAccount or GetPositions) wait until release_calls() lets them
        answer, oldest first (held_calls() counts those waiting). Turning it off releases them all."""
        if method not in UNARY_METHODS:
            raise ValueError(f"hold_calls: {method!r} is not one of {', '.join(UNARY_METHODS)}")
        with self._book.lock:
            if enabled:
                self._book.hold.add(method)
                return
            self._book.hold.discard(method)
        self.release_calls(method, count=None)

    def release_calls(self, method: str = "GetPositions", count: int | None = 1) -> int:
        """Let the oldest `count` held calls of `method` answer (None: all); how many were released."""
        with self._book.lock:
            waiting = [held for held in self._book.held if held.method == method]
            chosen = waiting if count is None else waiting[:count]
            for held in chosen:
                self._book.held.remove(held)
                self._post(held.release.set)
            self._book.lock.notify_all()
        return len(chosen)

    # ------------------------------------------------------------------ observation

    @property
    def connection_count(self) -> int:
        """Distinct peers (client TCP connections) that ever called an ExchangeService method.

        A reconnect is a new peer. gRPC channels of one process that share a target and options share
        one connection (the global subchannel pool), so they count once.
        """
        with self._book.lock:
            return len(self._book.peers)

    @property
    def peers(self) -> list[str]:
        """The distinct peers seen, in order of their first call (e.g. "ipv4:127.0.0.1:40312")."""
        with self._book.lock:
            return list(self._book.peers)

    @property
    def active_peers(self) -> list[str]:
        """The distinct peers that hold an open stream right now."""
        with self._book.lock:
            peers = {s.peer for topic in TOPICS for s in self._book.streams[topic]}
        return sorted(peers)

    def call_log(self) -> list[dict[str, Any]]:
        """Every call the mock answered (method, peer, metadata, status, messages written), oldest first."""
        with self._book.lock:
            return list(self._book.call_log)

    @property
    def calls(self) -> Counter[str]:
        """Calls received by method name (GetAccount, GetPositions, SubscribeAccount, SubscribePositions)."""
        with self._book.lock:
            return Counter(self._book.calls)

    def write_behind_max(self, topic: str = "account", *, reset: bool = False) -> float:
        """The longest an update of `topic` waited in the mock before it began writing it, in
        seconds: the harness's own backlog, or a reader that held its stream back. `reset`: start
        over from 0 after reading."""
        with self._book.lock:
            longest = self._book.write_behind_max[topic]
            if reset:
                self._book.write_behind_max[topic] = 0.0
        return longest

    def stalled_calls(self, method: str = "GetAccount") -> int:
        """Unary calls of `method` the stall has held so far."""
        with self._book.lock:
            return self._book.stalled[method]

    def ended_stalls(self, method: str = "GetAccount") -> int:
        """Held calls of `method` that ended because the client gave up (cancelled, or its deadline passed)."""
        with self._book.lock:
            return self._book.stall_ended[method]

    def held_calls(self, method: str = "GetPositions") -> int:
        """Calls of `method` that hold_calls() holds right now, waiting for their release."""
        with self._book.lock:
            return sum(1 for held in self._book.held if held.method == method)

    def wait_until(self, condition: Callable[[MockExchangeServer], bool], timeout: float) -> bool:
        """Block until `condition(self)` holds (re-checked whenever the book changes); False after `timeout` s."""
        with self._book.lock:
            return self._book.lock.wait_for(lambda: condition(self), timeout)

    def subscriptions(self, topic: str) -> int:
        """Streams of `topic` ("account" or "positions") open right now."""
        check_topic(topic)
        with self._book.lock:
            return len(self._book.streams[topic])

    def total_subscriptions(self, topic: str) -> int:
        """Streams of `topic` ever opened."""
        check_topic(topic)
        with self._book.lock:
            return self._book.totals[topic]

    def wait_for_subscriptions(self, topic: str, n: int, timeout: float = 5.0) -> int:
        """Block until at least `n` streams of `topic` are open; how many are. TimeoutError says what is."""
        check_topic(topic)
        book = self._book
        with book.lock:
            if not book.lock.wait_for(lambda: len(book.streams[topic]) >= n, timeout):
                raise TimeoutError(self._shortfall(topic, n, timeout))
            return len(book.streams[topic])

    async def wait_for_subscriptions_async(self, topic: str, n: int, timeout: float = 5.0) -> int:
        """wait_for_subscriptions for async tests: the caller's event loop keeps running meanwhile."""
        check_topic(topic)
        deadline = time.monotonic() + timeout
        while self.subscriptions(topic) < n:
            if time.monotonic() >= deadline:
                with self._book.lock:
                    raise TimeoutError(self._shortfall(topic, n, timeout))
            await asyncio.sleep(0.01)
        return self.subscriptions(topic)

    def _shortfall(self, topic: str, n: int, timeout: float) -> str:
        book = self._book
        return (
            f"mock exchange: expected at least {n} open {topic!r} subscription(s) within {timeout} s, "
            f"got {len(book.streams[topic])} (ever opened: {book.totals[topic]}; "
            f"calls: {dict(book.calls) or 'none'})"
        )

    @property
    def violations(self) -> list[str]:
        """What went wrong inside the mock (an exception in a handler, a server that would not stop)."""
        with self._book.lock:
            return list(self._book.violations)

    def reset_data(self) -> None:
        """Back to the spec's account and positions, with no failure, stall, hold or stamping set and no
        violation recorded; the open streams stay, and the counts start again from them, as on a
        fresh mock the streams had just opened (a run that reuses one mock: --attach)."""
        book = self._book
        with book.lock:
            book.account = spec_account()
            book.positions = spec_positions()
            book.failure = None
            book.stall = False
            book.stamp_on_send = None
            book.hold.clear()
            for held in book.held:  # a call still held answers now
                self._post(held.release.set)
            book.held.clear()
            book.violations.clear()
            book.calls.clear()
            book.stalled.clear()
            book.stall_ended.clear()
            book.call_log.clear()
            active = {s.peer for topic in TOPICS for s in book.streams[topic]}
            book.peers[:] = [peer for peer in book.peers if peer in active]
            for topic in TOPICS:
                book.totals[topic] = len(book.streams[topic])
            self.data_set = False

    def raise_violations(self) -> None:
        """Raise MockExchangeViolation listing the violations, if there are any."""
        found = self.violations
        if found:
            listing = "\n".join(f"  - {problem}" for problem in found)
            raise MockExchangeViolation(
                f"mock exchange recorded {len(found)} protocol violation(s):\n{listing}"
            )
