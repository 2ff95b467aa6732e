"""Stalls of the connector's own event loop: a stopped process, a virtual machine whose CPU was
taken away, a host that ran something else.

While the loop stands still nothing is written to any subscriber, so every update queued before
the stall looks, once it resumes, as if its subscriber had left it waiting: the lag bound would
drop fast readers with slow ones. A heartbeat on the loop tells a stall apart from overload: a
beat that comes late while the loop's thread got (almost) no CPU is a stall; a late beat after the
thread was busy (its own work, a long GC pass, a host that gave it only part of a core) is the
connector falling behind, which lag drops and overload shedding are for. During a stall, and for
`grace` seconds after it (time for the writers to run), lag is nobody's fault. The queue bound
still applies throughout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from implementation.logs import log_event

BEAT_S = 0.1
STALL_AFTER_S = 0.5  # a heartbeat this late ...
BUSY_SHARE = 0.2  # ... while the loop's thread ran for less than this share of it: a stall
SETTLE_S = 0.5  # after a stall, time to read the backlog it left before being behind means overload
_log = logging.getLogger("implementation.connector_core.hub")


class LoopStalls:
    """A heartbeat on the running loop, and the questions "is the loop stalled?" and "is lag my
    own fault right now?"."""

    __slots__ = ("_beat", "_beat_cpu", "_grace", "_running", "_seen", "_until", "stalls")

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._beat, self._beat_cpu = time.monotonic(), time.thread_time()
        self._until = self._seen = -math.inf
        self._running = False
        self.stalls = 0  # stalls seen since start

    async def run(self) -> None:
        """Beat every BEAT_S until cancelled."""
        self._running = True
        self._beat, self._beat_cpu = time.monotonic(), time.thread_time()
        try:
            while True:
                await asyncio.sleep(BEAT_S)
                self.stalled(time.monotonic())
                self._beat, self._beat_cpu = time.monotonic(), time.thread_time()
        finally:
            self._running = False

    def stalled(self, now: float) -> bool:
        """True when the loop has just come back from standing still (checked on the loop's own
        thread); False when no heartbeat runs."""
        if not self._running or (still := now - self._beat) <= STALL_AFTER_S:
            return False
        if time.thread_time() - self._beat_cpu > still * BUSY_SHARE:
            return False  # busy, not stopped: the loop's own work is behind
        if now >= self._until:
            self.stalls += 1
            log_event(_log, "loop_stalled", level=logging.WARNING, stood_still_s=round(still, 3))
        self._seen, self._until = now, now + self._grace
        return True

    def settling(self, now: float) -> bool:
        """True during a stall and for SETTLE_S after it: a backlog left by the stall is being read."""
        return self.stalled(now) or now - self._seen < SETTLE_S

    def excused(self, now: float) -> bool:
        """True during a stall and for `grace` seconds after it: lag then is not a subscriber's."""
        return self.stalled(now) or now < self._until
