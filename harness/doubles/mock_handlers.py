"""The mock exchange's ExchangeService handlers and the book they keep (what is open, who called).

MockExchangeServer (harness/doubles/mock_exchange.py) runs these on its own thread and event loop; the
test reads and changes the book from its thread, so every access to it holds the book's lock.
Only the generated contract code is used: the mock shares no code with an implementation.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import grpc

from opensqt.exchange.testdata import spec_account, spec_positions
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

TOPICS = ("account", "positions")
SYMBOL = re.compile(r"^[A-Z0-9]{1,32}$")
Context = grpc.aio.ServicerContext[Any, Any]


def copy_message(message: Any) -> Any:
    """A private copy, so the test may change its message after triggering it."""
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


def check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}: expected one of {', '.join(TOPICS)}")


@dataclass(frozen=True)
class StreamEnd:
    """A status to end a stream (or fail a call) with."""

    code: grpc.StatusCode
    details: str


@dataclass(eq=False)
class HeldCall:
    """A unary call the mock holds until the test releases it (its event is set on the mock's loop)."""

    method: str
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class StampClock:
    """How the mock stamps an account's updated_at as it writes it: the send time, moved `offset_ns`
    (a clock ahead of the reader's, > 0, or behind it, < 0), and advancing `pace` times as fast as
    real time from `since_ns` (below 1: each stamp falls further behind the send time, as when the
    reader trails the writer). Stamps carry nanoseconds."""

    offset_ns: int = 0
    pace: float = 1.0
    since_ns: int = 0

    def stamp_ns(self, now_ns: int) -> int:
        return self.since_ns + round(self.pace * (now_ns - self.since_ns)) + self.offset_ns


@dataclass(eq=False)
class Subscription:
    """One open stream: its topic, its symbol filter and the updates waiting to be written."""

    topic: str
    symbol: str
    peer: str
    # (update or StreamEnd, time.monotonic() it was queued)
    queue: asyncio.Queue[tuple[Any, float]] = field(default_factory=asyncio.Queue)

    def wants(self, message: Any) -> bool:
        return self.topic == "account" or not self.symbol or message.symbol == self.symbol


class MockBook:
    """The mock's state: the data the unary calls return, the open streams, the counters."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.account = spec_account()
        self.positions = spec_positions()
        self.failure: StreamEnd | None = None
        self.stamp_on_send: StampClock | None = None  # stamp accounts as they are written (latency, lag)
        self.stall = False  # unary calls wait until the client gives up (deadline or cancel)
        self.stalled: Counter[str] = Counter()  # unary calls held by the stall, by method
        self.stall_ended: Counter[str] = Counter()  # held calls the client gave up on (cancel or deadline)
        self.hold: set[str] = set()  # unary methods whose calls wait until the test releases them
        self.held: list[HeldCall] = []  # calls waiting for their release, oldest first
        self.streams: dict[str, set[Subscription]] = {topic: set() for topic in TOPICS}
        self.totals: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.peers: list[str] = []
        self.violations: list[str] = []
        self.call_log: deque[dict[str, Any]] = deque(maxlen=2000)  # for --grpc-trace
        self.write_behind_max: dict[str, float] = dict.fromkeys(TOPICS, 0.0)  # seconds, by topic

    def note_write_behind(self, topic: str, seconds: float) -> None:
        # a float max under the GIL, from the mock's one loop: no lock on the per-update path
        if seconds > self.write_behind_max[topic]:
            self.write_behind_max[topic] = seconds

    def log_call(self, method: str, context: Context, code: str, details: str, messages: int) -> None:
        metadata = [
            (key, "<redacted>" if key.lower() == "authorization" else str(value))
            for key, value in context.invocation_metadata() or ()
        ]
        entry: dict[str, Any] = {"method": method, "peer": context.peer(), "metadata": metadata, "code": code}
        entry |= {"details": details, "messages": messages, "at": time.time()}
        with self.lock:
            self.call_log.append(entry)

    def seen(self, method: str, peer: str) -> StreamEnd | None:
        """Count the call and its peer; the failure to answer with, if one is set."""
        with self.lock:
            self.calls[method] += 1
            if peer not in self.peers:
                self.peers.append(peer)
            return self.failure

    def open(self, topic: str, symbol: str, peer: str) -> Subscription:
        subscription = Subscription(topic, symbol, peer)
        with self.lock:
            self.streams[topic].add(subscription)
            self.totals[topic] += 1
            self.lock.notify_all()
        return subscription

    def close(self, subscription: Subscription) -> None:
        with self.lock:
            self.streams[subscription.topic].discard(subscription)
            self.lock.notify_all()

    def current_account(self) -> pb.Account:
        with self.lock:
            return self.account

    def current_positions(self, symbol: str) -> list[pb.Position]:
        with self.lock:
            return [p for p in self.positions if not symbol or p.symbol == symbol]

    def record(self, problem: str) -> None:
        with self.lock:
            self.violations.append(problem)

    def deliver(self, topic: str, message: Any) -> None:
        """Queue `message` for every open stream of `topic` that wants it (on the server's loop)."""
        with self.lock:
            subscriptions = list(self.streams[topic])
        for subscription in subscriptions:
            if subscription.wants(message):
                subscription.queue.put_nowait((message, time.monotonic()))

    def end_all(self, code: grpc.StatusCode, details: str) -> None:
        """Queue the end of every open stream, after the updates queued before (on the server's loop)."""
        with self.lock:
            subscriptions = [s for topic in TOPICS for s in self.streams[topic]]
        for subscription in subscriptions:
            subscription.queue.put_nowait((StreamEnd(code, details), time.monotonic()))


class MockExchangeService(pb_grpc.ExchangeServiceServicer):
    """The RPC handlers. An unexpected exception in one is recorded in the book as a violation."""

    def __init__(self, book: MockBook) -> None:
        self._book = book

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        try:
            await self._admit("GetAccount", context)
            await self._hold_if_stalled("GetAccount")
            await self._hold_until_released("GetAccount")
            answer = self._book.current_account()
            self._book.log_call("GetAccount", context, "OK", "", 1)
            return answer
        except Exception as error:
            self._log_failure("GetAccount", error, context, 0)
            self._violation("GetAccount", error, context)
            raise

    async def GetPositions(
        self, request: pb.GetPositionsRequest, context: Context
    ) -> pb.GetPositionsResponse:
        try:
            await self._admit("GetPositions", context, request.symbol)
            await self._hold_if_stalled("GetPositions")
            await self._hold_until_released("GetPositions")
            answer = pb.GetPositionsResponse(positions=self._book.current_positions(request.symbol))
            self._book.log_call("GetPositions", context, "OK", "", 1)
            return answer
        except Exception as error:
            self._log_failure("GetPositions", error, context, 0)
            self._violation("GetPositions", error, context)
            raise

    async def SubscribeAccount(self, request: pb.SubscribeAccountRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream("SubscribeAccount", "account", "", context)

    async def SubscribePositions(self, request: pb.SubscribePositionsRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream("SubscribePositions", "positions", request.symbol, context)

    async def _admit(self, method: str, context: Context, symbol: str = "") -> None:
        failure = self._book.seen(method, context.peer())
        if failure is not None:
            await context.abort(failure.code, failure.details)
        if symbol and not SYMBOL.match(symbol):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"symbol {symbol[:40]!r} is not a valid instrument name (1-32 upper-case letters and digits)",
            )

    async def _hold_if_stalled(self, method: str) -> None:
        """While the book says stall, a unary call never answers: it waits until the client gives up."""
        book = self._book
        with book.lock:
            if not book.stall:
                return
            book.stalled[method] += 1
            book.lock.notify_all()
        try:
            await asyncio.Event().wait()
        except (
            asyncio.CancelledError
        ):  # grpc cancels the handler when the client cancels or its deadline passes
            with book.lock:
                book.stall_ended[method] += 1
                book.lock.notify_all()
            raise

    async def _hold_until_released(self, method: str) -> None:
        """While the book holds `method`, a unary call waits until the test releases it, then answers
        (a slow exchange the test controls, unlike the stall that never answers)."""
        book = self._book
        with book.lock:
            if method not in book.hold:
                return
            held = HeldCall(method)
            book.held.append(held)
            book.lock.notify_all()
        try:
            await held.release.wait()
        finally:  # released, or cancelled by its client: either way no longer held
            with book.lock:
                if held in book.held:
                    book.held.remove(held)
                book.lock.notify_all()

    async def _stream(self, method: str, topic: str, symbol: str, context: Context) -> None:
        written = 0
        try:
            await self._admit(method, context, symbol)
            subscription = self._book.open(topic, symbol, context.peer())
            try:
                # headers at once: a client can tell the subscription is established before any update
                await context.send_initial_metadata(())
                while True:
                    item, queued_at = await subscription.queue.get()
                    # how far behind the mock writes what it was given: its own backlog, or a
                    # reader holding the stream back (a write waits for HTTP/2 flow control)
                    self._book.note_write_behind(topic, time.monotonic() - queued_at)
                    if isinstance(item, StreamEnd):
                        if item.code is not grpc.StatusCode.OK:
                            await context.abort(item.code, item.details)
                        self._book.log_call(method, context, "OK", "", written)
                        return
                    clock = self._book.stamp_on_send
                    if clock is not None and isinstance(item, pb.Account):
                        # the exchange's send time, taken as the update leaves it (after the
                        # harness's own hand-off from the triggering thread)
                        item.updated_at.FromNanoseconds(clock.stamp_ns(time.time_ns()))
                    await context.write(item)
                    written += 1
            finally:
                self._book.close(subscription)
        except asyncio.CancelledError:
            self._book.log_call(method, context, "CANCELLED", "the client went away", written)
            raise
        except Exception as error:
            self._log_failure(method, error, context, written)
            self._violation(method, error, context)
            raise

    def _log_failure(self, method: str, error: Exception, context: Context, messages: int) -> None:
        code = context.code() if isinstance(error, grpc.aio.AbortError) else None
        name = code.name if isinstance(code, grpc.StatusCode) else type(error).__name__
        self._book.log_call(method, context, name, str(context.details() or error), messages)

    def _violation(self, method: str, error: Exception, context: Context) -> None:
        if isinstance(error, grpc.aio.AbortError):
            return  # a status the mock chose to send
        if context.cancelled() or context.done():
            return  # the client went away mid-call: normal for a stream
        if type(error).__name__ == "ExecuteBatchError":
            # writing or aborting a call that finished a moment ago (the client cancelled while the
            # mock was ending its streams): a race of the two ends, not a protocol violation
            return
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        self._book.record(f"{method} from {context.peer()}: handler raised {last}")
