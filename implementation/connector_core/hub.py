"""The broadcast hub: one upstream subscription per topic, fanned out to any number of subscribers.

- The upstream subscriptions (account and positions) start when the hub starts, i.e. at server
  start-up, not with the first subscriber: the connector is then SERVING only once its upstream
  really works, the first client gets its first update with no start-up delay, and the "one
  connection, one subscription per topic" rule holds at every moment, with or without clients.
- Every valid update goes, in the order the exchange produced it, into the bounded queue of each
  subscriber (positions: only those that want its symbol). An update that fails validation is
  logged and dropped, never forwarded.
- A subscriber whose queue is full, or whose oldest undelivered update has waited longer than the
  policy's `subscriber_max_lag` (counted from when the connector read it), is dropped at once: it
  is removed, its queue is freed, and its stream ends with RESOURCE_EXHAUSTED (logged, counted).
  The fan-out never waits for anyone.
- Overload is told apart from a slow reader by how many fall behind, and whether they catch up.
  A slow reader falls behind alone. A fan-out that cannot keep up leaves every subscriber of a
  topic owed ever older updates: when at least half of a topic's subscribers have an update
  waiting past a quarter of the lag bound and their queues did not shrink since the watchdog's
  last look (a burst they are draining is not overload), the laggiest of the subscribers behind
  are shed, down to as many as the connector's recent deliveries can serve, so the others catch
  up. Meanwhile, and for two bounds after a shed, new subscribers are
  refused (UNAVAILABLE): the clients just shed would otherwise bring the overload straight back.
- A watchdog runs beside the upstream streams: after `probe_after` seconds without an update it
  asks the exchange (GetAccount, the liveness read); when nothing at all was heard for `max_age`
  seconds the upstream counts as hung and is dropped like a failed one (below). While the
  upstream lag is past `max_age`, the view is stale: health is NOT_SERVING and GetAccount refuses.
- When the upstream fails, every subscriber's stream ends with UNAVAILABLE (the updates in between
  would be lost, so clients must resynchronise), new subscriptions are refused with UNAVAILABLE,
  the owner is told NOT_SERVING, and the hub probes the exchange with exponential backoff; once it
  answers, both subscriptions are opened again and the owner is told SERVING.
- A subscription is an async context manager; leaving it, by any exception included, removes it.
- The hub keeps the latest valid account it saw (from the stream, or offered by a GetAccount
  answer while it had none) as the connector's current view, so GetAccount is answered without a
  second round trip while the upstream subscription is live. The view is forgotten when the
  upstream is lost or sends an invalid account; GetAccount then asks the exchange again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from implementation.adapters.interface import Exchange
from implementation.connector_core.freshness import Freshness, FreshnessPolicy
from implementation.connector_core.stall import LoopStalls
from implementation.connector_core.subscription import Subscription, SubscriptionEnded
from implementation.contract.backoff import ReconnectPolicy
from implementation.contract.errors import InvalidData
from implementation.contract.validation import validate_account, validate_position
from implementation.logs import log_event
from opensqt.exchange.v1 import exchange_pb2 as pb

ACCOUNT = "account"
POSITIONS = "positions"
TOPICS = (ACCOUNT, POSITIONS)
DEFAULT_QUEUE_SIZE = 1024
# The upstream counts as recovered (backoff starts from the beginning again) after this long up.
UPSTREAM_STABLE_AFTER_S = 5.0
SHUTTING_DOWN = "shutting down"
OVERLOAD_COOLDOWN_FACTOR = 2.0  # after a shed, new subscribers wait this many lag bounds
# A shed keeps as many subscribers as this share of what the connector delivered over the
# watchdog's last looks could serve at the rate they were offered updates: the rest of its
# capacity drains the backlog the ones kept are owed.
SHED_KEEP_SHARE = 0.7
DELIVERY_WINDOW_LOOKS = 4  # the share delivered is taken over this many watchdog looks (one is noisy)
# Behind: owed an update older than this share of the lag bound (overload's sign, what a shed drops).
BEHIND_SHARE = 0.25

ServingCallback = Callable[[bool], Awaitable[None]]
_log = logging.getLogger("implementation.connector_core.hub")


@dataclass
class TopicStats:
    """Counters of one topic, read by the metrics endpoint."""

    received: int = 0  # updates read from the exchange, malformed ones included (C12)
    invalid: int = 0  # of those, the ones rejected by validation (never fanned out)
    sent: int = 0  # messages written to subscribers (counted by the server's stream loop)
    dropped: int = 0  # subscribers ended with RESOURCE_EXHAUSTED


class Hub:
    """Owns the exchange connection and its two upstream subscriptions; fans updates out."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        backoff: ReconnectPolicy | None = None,
        on_serving: ServingCallback | None = None,
        stable_after: float = UPSTREAM_STABLE_AFTER_S,
        freshness: FreshnessPolicy | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.exchange = exchange
        self.queue_size = queue_size
        self.backoff = backoff or ReconnectPolicy()
        self.stats = {topic: TopicStats() for topic in TOPICS}
        self.upstream_connections = 0  # 1 while the exchange connection is up
        self.upstream_reconnects = 0  # times the upstream subscriptions were opened again after a failure
        self._subscribers: dict[str, dict[Subscription, None]] = {topic: {} for topic in TOPICS}
        self._upstream_open = dict.fromkeys(TOPICS, 0)
        self._on_serving = on_serving
        self._stable_after = stable_after
        self._serving = False
        self._down_reason = "the upstream exchange is not connected yet"
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._serving_changed: asyncio.Event | None = None
        self._account: pb.Account | None = None  # the current view, kept by the account stream
        self.policy = freshness or FreshnessPolicy()
        self.freshness = Freshness()
        self._max_lag = self.policy.subscriber_max_lag
        self._stale: str | None = None  # why the view is not current while the upstream is up
        self._healthy = False  # what the owner was last told
        self.probes = 0  # liveness reads sent to a quiet upstream
        self.hung_upstreams = 0  # upstream connections the watchdog gave up on
        self.shed_rounds = 0  # times overload shed the laggiest subscribers
        # After a shed, new subscribers wait out a cool-down even once the lag is back under the
        # bound: the clients just shed resubscribe at once, and admitting them straight away would
        # bring the overload back (an oscillation whose peaks are the stale data shedding prevents).
        self._overloaded_until = 0.0
        self._overload: str | None = None  # why the connector is overloaded, as the watchdog last saw
        # (offered, taken) updates of the subscribers between the watchdog's last looks
        self._deliveries: deque[tuple[int, int]] = deque(maxlen=DELIVERY_WINDOW_LOOKS)
        self.loop_stalls = LoopStalls(grace=self._max_lag)
        self._hung: str | None = None  # why, until the upstream answers again

    # ------------------------------------------------------------------ observation

    @property
    def serving(self) -> bool:
        """True while the upstream subscriptions are open and subscribers are accepted."""
        return self._serving

    @property
    def upstream_subscriptions(self) -> dict[str, int]:
        """Upstream subscriptions open right now, by topic (at most 1 each)."""
        return dict(self._upstream_open)

    @property
    def healthy(self) -> bool:
        """Serving, with a view that is current (health SERVING)."""
        return self._serving and self._stale is None

    def stale_reason(self) -> str | None:
        """Why the view must not be served as current right now; None while it may. Also set while
        the upstream is down after the watchdog found it hung, until it answers again."""
        if not self._serving:
            return self._hung
        return self._stale or self.freshness.stale_reason(self.policy.max_age)

    def data_age(self) -> float:
        """Seconds since the upstream last gave a sign of life (0 while there is no live upstream)."""
        return self.freshness.age() if self._serving else 0.0

    def current_account(self) -> pb.Account | None:
        """The latest valid account from the live upstream subscription; None when there is none."""
        return self._account if self._serving else None

    def offer_account(self, account: pb.Account) -> None:
        """A validated account the exchange answered; kept only while the hub has no newer view."""
        if self._serving and self._account is None:
            self._account = account

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers[_check_topic(topic)])

    async def wait_serving(self, timeout: float = 5.0) -> None:
        """Return once serving; TimeoutError naming the reason otherwise."""
        deadline = time.monotonic() + timeout
        while not self._serving:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"hub not serving after {timeout} s: {self._down_reason}")
            changed = self._serving_changed or asyncio.Event()
            self._serving_changed = changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to the exchange and open the upstream subscriptions, in the background."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="hub-upstream")

    def close_subscribers(self, details: str = SHUTTING_DOWN) -> None:
        """End every subscription with UNAVAILABLE `details` and refuse new ones from now on."""
        self._closed = True
        self._end_all(grpc.StatusCode.UNAVAILABLE, details)

    async def stop(self) -> None:
        """Close subscribers, cancel the upstream subscriptions, close the exchange; idempotent."""
        self.close_subscribers()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.upstream_connections or task is not None:
            self.upstream_connections = 0
            try:
                await self.exchange.close()
            except Exception as exc:  # closing must not stop the shutdown
                log_event(_log, "upstream_close_failed", level=logging.WARNING, reason=_describe(exc))

    # ------------------------------------------------------------------ subscribers

    def subscribe(self, topic: str, *, symbol: str = "", peer: str = "") -> Subscription:
        """A subscription to `topic`, registered when its `async with` block is entered."""
        return Subscription(
            _check_topic(topic), symbol, peer, self.queue_size, on_enter=self._add, on_exit=self._remove
        )

    def _add(self, sub: Subscription) -> None:
        if self._closed:
            raise SubscriptionEnded(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if not self._serving:
            raise SubscriptionEnded(
                grpc.StatusCode.UNAVAILABLE, f"upstream exchange unavailable: {self._down_reason}"
            )
        stale = self.stale_reason()
        if stale is not None:
            raise SubscriptionEnded(grpc.StatusCode.UNAVAILABLE, f"the connector's view is stale: {stale}")
        if self._overload is not None:
            raise SubscriptionEnded(
                grpc.StatusCode.UNAVAILABLE, f"connector overloaded: {self._overload}; retry shortly"
            )
        if (wait := self._overloaded_until - time.monotonic()) > 0:
            raise SubscriptionEnded(
                grpc.StatusCode.UNAVAILABLE,
                f"connector overloaded: it shed subscribers to catch up and admits new ones again in "
                f"{wait:.2f} s; retry then",
            )
        subscribers = self._subscribers[sub.topic]
        subscribers[sub] = None
        log_event(
            _log,
            "subscriber_added",
            topic=sub.topic,
            symbol=sub.symbol,
            peer=sub.peer,
            subscribers=len(subscribers),
        )

    def _remove(self, sub: Subscription, exc: BaseException | None) -> None:
        subscribers = self._subscribers[sub.topic]
        subscribers.pop(sub, None)
        if exc is None:
            reason = "ended"
        elif isinstance(exc, asyncio.CancelledError):
            reason = "client gone"  # the client cancelled or disconnected
        elif isinstance(exc, SubscriptionEnded):
            reason = exc.code.name
        else:
            reason = _describe(exc)
        sub.end(grpc.StatusCode.CANCELLED, reason, discard=True)
        log_event(
            _log, "subscriber_removed", topic=sub.topic, symbol=sub.symbol, peer=sub.peer,
            reason=reason, subscribers=len(subscribers),
        )  # fmt: skip

    def _drop(self, sub: Subscription, now: float) -> None:
        """The subscriber fell behind: remove it and end its stream with RESOURCE_EXHAUSTED."""
        self._subscribers[sub.topic].pop(sub, None)
        self.stats[sub.topic].dropped += 1
        lag, queued = sub.lag(now), sub.queued
        if queued >= sub.capacity:
            why = f"fell more than {sub.capacity} {sub.topic} updates behind"
        else:
            why = f"left a {sub.topic} update waiting {lag:.2f} s (bound {self._max_lag:g} s)"
        sub.end(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"subscriber {why} and was dropped; resynchronise (GetAccount/GetPositions) and subscribe again",
            discard=True,
        )
        log_event(
            _log, "subscriber_dropped", level=logging.WARNING, topic=sub.topic, symbol=sub.symbol,
            peer=sub.peer, queue_size=sub.capacity, queued=queued, lag_s=round(lag, 3),
        )  # fmt: skip

    def overload(self, now: float) -> str | None:
        """Why the connector is overloaded right now, or None: at least half of a topic's
        subscribers (two at least) are owed an update older than BEHIND_SHARE of the lag bound,
        and are not catching up (their queues no shorter than at the watchdog's last look). Call
        once per watchdog tick: it takes the queues' lengths, and what the subscribers were
        offered and took, for the next look.

        The upstream lag (C30) is not a sign of overload: the upstream is read on a loop of its
        own (adapters/threaded.py) and never waits for the subscribers, so a lag there is the
        exchange's own backlog in writing, which shedding clients would not shorten."""
        behind_after = self._max_lag * BEHIND_SHARE
        reason = None
        offered = taken = 0
        for topic in TOPICS:
            subscribers = self._subscribers[topic]
            behind = 0
            for sub in subscribers:
                queued = sub.queued
                if sub.lag(now) > behind_after and queued >= sub.mark:
                    behind += 1
                # what its stream loop took since the last look: what was queued, less the growth
                added = sub.offered - sub.offered_mark
                offered += added
                taken += added - (queued - sub.mark)
                sub.mark, sub.offered_mark = queued, sub.offered
            if reason is None and behind >= 2 and 2 * behind >= len(subscribers):
                reason = (
                    f"{behind} of its {len(subscribers)} {topic} subscribers wait ever longer "
                    f"for updates more than {behind_after:g} s old"
                )
        self._deliveries.append((offered, taken))
        return reason

    def _servable(self, subscribers: int) -> int | None:
        """Of `subscribers` offered updates at the rate of the last looks, how many the connector's
        deliveries over them could serve with SHED_KEEP_SHARE of its capacity; None before any
        update was offered."""
        offered = sum(look[0] for look in self._deliveries)
        if offered == 0:
            return None
        taken = sum(look[1] for look in self._deliveries)
        return int(SHED_KEEP_SHARE * subscribers * min(1.0, taken / offered))

    def shed(self) -> int:
        """Overloaded: drop the laggiest of the subscribers that are behind (BEHIND_SHARE of the bound),
        so the others catch up; how many were dropped. As many as it takes to leave only those the
        last looks' deliveries could serve (SHED_KEEP_SHARE), a quarter of everyone at least: a
        connector that sheds a quarter a tick while it serves a third of its subscribers lets
        them all drift to the lag bound first. With nobody behind (a direct call), the laggiest
        of everyone."""
        now = time.monotonic()
        behind_after = self._max_lag * BEHIND_SHARE
        everyone = [sub for topic in TOPICS for sub in self._subscribers[topic]]
        behind = [sub for sub in everyone if sub.lag(now) > behind_after] or everyone
        behind.sort(key=lambda sub: (sub.lag(now), sub.queued), reverse=True)
        count = (len(everyone) + 3) // 4
        if (servable := self._servable(len(everyone))) is not None:
            count = max(count, len(everyone) - max(1, servable))
        laggiest = behind[:count]
        for sub in laggiest:
            self._drop(sub, now)
        if laggiest:
            self.shed_rounds += 1
            self._overloaded_until = now + OVERLOAD_COOLDOWN_FACTOR * self._max_lag
        return len(laggiest)

    def drop_lagging(self) -> int:
        """Drop every subscriber whose oldest undelivered update waited past the bound; how many.
        Nobody while a stall of the connector's own loop explains the wait."""
        now = time.monotonic()
        if self.loop_stalls.excused(now):
            return 0
        bound = self._max_lag
        late = [sub for topic in TOPICS for sub in self._subscribers[topic] if sub.lag(now) > bound]
        for sub in late:
            self._drop(sub, now)
        return len(late)

    def _end_all(self, code: grpc.StatusCode, details: str) -> None:
        for subscribers in self._subscribers.values():
            for sub in subscribers:
                sub.end(code, details, discard=False)
            subscribers.clear()

    # ------------------------------------------------------------------ fan-out (the hot path)

    def publish_account(self, account: pb.Account) -> None:
        """Fan one upstream account update out to every account subscriber (after validation)."""
        stats = self.stats[ACCOUNT]
        stats.received += 1
        try:
            validate_account(account)
        except InvalidData as exc:
            self._account = None  # the exchange's state is in doubt: ask it again
            self._reject(ACCOUNT, stats, exc)
            return
        self._account = account
        freshness = self.freshness
        freshness.account_read(account)
        now = freshness.last_heard  # each subscriber's lag counts from the read (C34)
        bound = math.inf if self.loop_stalls.excused(now) else self._max_lag
        late = [
            sub
            for sub in self._subscribers[ACCOUNT]
            if not sub.put_nowait(account, now) or sub.lag(now) > bound
        ]
        for sub in late:
            self._drop(sub, now)

    def publish_position(self, position: pb.Position) -> None:
        """Fan one upstream position update out to the subscribers of its symbol (after validation)."""
        stats = self.stats[POSITIONS]
        stats.received += 1
        try:
            validate_position(position)
        except InvalidData as exc:
            self._reject(POSITIONS, stats, exc)
            return
        symbol = position.symbol
        freshness = self.freshness
        freshness.heard()
        now = freshness.last_heard
        bound = math.inf if self.loop_stalls.excused(now) else self._max_lag
        late = [
            sub
            for sub in self._subscribers[POSITIONS]
            if (not sub.symbol or sub.symbol == symbol)
            and (not sub.put_nowait(position, now) or sub.lag(now) > bound)
        ]
        for sub in late:
            self._drop(sub, now)

    @staticmethod
    def _reject(topic: str, stats: TopicStats, exc: InvalidData) -> None:
        stats.invalid += 1
        log_event(_log, "upstream_invalid_data", level=logging.ERROR, topic=topic, reason=str(exc))

    # ------------------------------------------------------------------ upstream supervision

    async def _supervise(self) -> None:
        attempt = 0
        connected_once = False
        while True:
            try:
                if connected_once:
                    await self.exchange.get_account()  # is the upstream answering again?
                else:
                    await self.exchange.connect()
            except Exception as exc:
                attempt += 1
                self._down_reason = _describe(exc)
                delay = self.backoff.delay(attempt)
                log_event(
                    _log, "upstream_unavailable", level=logging.WARNING, reason=self._down_reason,
                    attempt=attempt, retry_in_s=round(delay, 3),
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            self.upstream_connections = 1
            self._hung = None
            if connected_once:
                self.upstream_reconnects += 1
            log_event(_log, "upstream_connected", reconnect=connected_once, attempt=attempt)
            connected_once = True
            started = time.monotonic()
            failure = await self._run_upstream()
            if time.monotonic() - started >= self._stable_after:
                attempt = 0
            attempt += 1
            self.upstream_connections = 0
            self._down_reason = failure
            log_event(_log, "upstream_lost", level=logging.ERROR, reason=failure)
            await self._set_serving(False)
            self._end_all(grpc.StatusCode.UNAVAILABLE, f"upstream exchange unavailable: {failure}")
            await asyncio.sleep(self.backoff.delay(attempt))

    async def _run_upstream(self) -> str:
        """Run both upstream subscriptions and their watchdog until one ends; why it ended."""
        loop = asyncio.get_running_loop()
        self.freshness.reset()
        self._stale = None
        self._overload = None
        streams: dict[str, asyncio.Task[Any]] = {
            ACCOUNT: loop.create_task(
                self.exchange.run_account_stream(self.publish_account), name="upstream-account"
            ),
            POSITIONS: loop.create_task(
                self.exchange.run_position_stream(self.publish_position), name="upstream-positions"
            ),
            "watchdog": loop.create_task(self._watch(), name="upstream-watchdog"),
            "heartbeat": loop.create_task(self.loop_stalls.run(), name="loop-heartbeat"),
        }
        try:
            for topic in TOPICS:
                self._upstream_open[topic] = 1
            await asyncio.sleep(0)  # let both streams register before subscribers are accepted
            if not any(task.done() for task in streams.values()):
                await self._set_serving(True)
            done, _ = await asyncio.wait(streams.values(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in streams.values():
                task.cancel()
            await asyncio.gather(*streams.values(), return_exceptions=True)
            for topic in TOPICS:
                self._upstream_open[topic] = 0
        topic, ended = next((topic, task) for topic, task in streams.items() if task in done)
        if topic == "watchdog" and not ended.cancelled() and ended.exception() is None:
            return str(ended.result())
        if ended.cancelled():
            return f"the upstream {topic} stream was cancelled"
        error = ended.exception()
        if error is None:
            return f"the upstream {topic} stream ended"
        return f"{topic} stream: {_describe(error)}"

    async def _watch(self) -> str:
        """The watchdog of one upstream connection: returns (ending it) once the upstream is hung.

        Every tick: a liveness read after `probe_after` s of silence, the hung check, the stale
        check (health follows it) and the drop of subscribers left behind by a stalled stream."""
        policy, freshness = self.policy, self.freshness
        probe: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(policy.tick)
                age = freshness.age()
                if age > policy.max_age:
                    self.hung_upstreams += 1
                    reason = (
                        f"no sign of life from the upstream exchange for {age:.1f} s "
                        f"(data age bound {policy.max_age:g} s): the upstream is hung"
                    )
                    self._hung = reason
                    return reason
                if age >= policy.probe_after and (probe is None or probe.done()):
                    probe = asyncio.get_running_loop().create_task(self._probe(), name="upstream-probe")
                stale = freshness.stale_reason(policy.max_age)
                if stale != self._stale:
                    self._stale = stale
                    if stale is not None:
                        log_event(_log, "view_stale", level=logging.WARNING, reason=stale)
                    else:
                        log_event(_log, "view_fresh", upstream_lag_s=round(freshness.upstream_lag, 3))
                    await self._tell_health()
                # behind just after a stall of our own loop is a backlog to read, not an overload
                now = time.monotonic()
                overload = self.overload(now)
                self._overload = None if self.loop_stalls.settling(now) else overload
                if self._overload is not None:
                    self.shed()
                self.drop_lagging()
        finally:
            if probe is not None:
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)

    async def _probe(self) -> None:
        """The liveness read: an answer from a quiet upstream is a sign of life."""
        self.probes += 1
        try:
            await self.exchange.get_account()
        except Exception as exc:  # the stream or the hung check will say what is wrong
            log_event(_log, "upstream_probe_failed", level=logging.DEBUG, reason=_describe(exc))
            return
        self.freshness.caught_up()

    async def _set_serving(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        if not serving:
            self._account = None
            self._stale = None
        changed, self._serving_changed = self._serving_changed, None
        if changed is not None:
            changed.set()
        await self._tell_health()

    async def _tell_health(self) -> None:
        healthy = self.healthy
        if healthy != self._healthy:
            self._healthy = healthy
            if self._on_serving is not None:
                await self._on_serving(healthy)


def _check_topic(topic: str) -> str:
    if topic not in TOPICS:
        raise ValueError(f"topic {topic!r} is not one of {', '.join(TOPICS)}")
    return topic


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "ACCOUNT",
    "DEFAULT_QUEUE_SIZE",
    "POSITIONS",
    "TOPICS",
    "Hub",
    "Subscription",
    "SubscriptionEnded",
    "TopicStats",
]
