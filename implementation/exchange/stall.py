"""Stalls of the connector's own event loop: a long GC pause, a starved CPU, a stopped process.

While the loop stands still nothing is written to any subscriber, so every update queued before
the stall looks, once it resumes, as if its subscriber had left it waiting: the lag bound would
drop fast readers with slow ones. A heartbeat on the loop tells a stall apart; during one, and
for `grace` seconds after it (time for the writers to run), lag is nobody's fault. The queue
bound still applies throughout.
"""

from __future__ import annotations

import asyncio
import time

BEAT_S = 0.1
STALL_AFTER_S = 0.5  # a heartbeat this late: the loop itself stood still


class LoopStalls:
    """A heartbeat on the running loop and the question "is lag my own fault right now?"."""

    __slots__ = ("_beat", "_grace", "_running", "_until", "stalls")

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._beat = time.monotonic()
        self._until = 0.0
        self._running = False
        self.stalls = 0  # stalls seen since start

    async def run(self) -> None:
        """Beat every BEAT_S until cancelled."""
        self._running, self._beat = True, time.monotonic()
        try:
            while True:
                await asyncio.sleep(BEAT_S)
                self.excused(time.monotonic())
                self._beat = time.monotonic()
        finally:
            self._running = False

    def excused(self, now: float) -> bool:
        """True while the loop is stalled or just resumed from a stall (lag then is not a
        subscriber's); False when no heartbeat runs."""
        if not self._running:
            return False
        if now - self._beat > STALL_AFTER_S:
            if now >= self._until:
                self.stalls += 1
            self._until = now + self._grace
        return now < self._until
