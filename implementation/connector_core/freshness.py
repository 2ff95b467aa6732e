"""How fresh the connector's view of the exchange is, and the bounds past which it is not current.

Two figures, both kept by the hub:
- data age: seconds since the upstream last gave a sign of life, an update on either stream or
  an answer to the watchdog's liveness read. A quiet market sends no updates, so the watchdog asks
  (GetAccount) after `probe_after` seconds of silence: a live exchange answers and the age stays
  near `probe_after`; a frozen one does not, and the age grows until it passes `max_age`.
- upstream lag: how much later, relative to the exchange's stamps (`updated_at`), the connector
  reads the newest account update than it read the most punctual one since it connected. It grows
  when the connector reads slower than the exchange writes (the updates wait in the transport),
  even though each read refreshes the data age. Measured against the connection's own best case,
  it does not count a constant clock offset between the hosts, or stamps of long ago.
Past `max_age` on either figure the view is stale: it is never served as current.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opensqt.exchange.v1 import exchange_pb2 as pb

DEFAULT_MAX_AGE_S = 5.0
DEFAULT_PROBE_AFTER_S = 1.0
DEFAULT_SUBSCRIBER_MAX_LAG_S = 1.0


@dataclass(frozen=True)
class FreshnessPolicy:
    """The bounds: `max_age` on data age and upstream lag; `probe_after` seconds of silence before a
    liveness read; `subscriber_max_lag` on how long an update may wait for a subscriber."""

    max_age: float = DEFAULT_MAX_AGE_S
    probe_after: float = DEFAULT_PROBE_AFTER_S
    subscriber_max_lag: float = DEFAULT_SUBSCRIBER_MAX_LAG_S

    def __post_init__(self) -> None:
        for name in ("max_age", "probe_after", "subscriber_max_lag"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 s, got {getattr(self, name)}")
        if self.probe_after >= self.max_age:
            raise ValueError(f"probe_after ({self.probe_after} s) must be below max_age ({self.max_age} s)")

    @property
    def tick(self) -> float:
        """How often the watchdog looks: often enough to notice a bound passing within a fraction of it."""
        return min(self.probe_after, self.max_age / 10) / 2


class Freshness:
    """The figures themselves, updated on the hot path with plain arithmetic."""

    __slots__ = ("_floor", "_newest_stamp", "last_heard", "upstream_lag")

    def __init__(self) -> None:
        self.last_heard = time.monotonic()
        self.upstream_lag = 0.0
        self._newest_stamp = 0.0
        self._floor = float("inf")  # the smallest read-minus-stamp delay seen on this connection

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def account_read(self, account: pb.Account) -> None:
        """A sign of life, and the lag of this update behind its exchange stamp. Only a stamp newer
        than every one before counts: an account sent again unchanged keeps the stamp of its last
        change, which says nothing about how far behind the read is."""
        self.last_heard = time.monotonic()
        stamp = account.updated_at
        when = stamp.seconds + stamp.nanos * 1e-9
        if when > self._newest_stamp:
            self._newest_stamp = when
            delay = time.time() - when
            if delay < self._floor:
                self._floor = delay
            self.upstream_lag = delay - self._floor

    def caught_up(self) -> None:
        """A quiet upstream answered the liveness read: no update waits to be read."""
        self.last_heard = time.monotonic()
        self.upstream_lag = 0.0

    def reset(self) -> None:
        """A new upstream connection: nothing old counts against it."""
        self.last_heard = time.monotonic()
        self.upstream_lag = 0.0
        self._newest_stamp = 0.0
        self._floor = float("inf")  # the smallest read-minus-stamp delay seen on this connection

    def age(self) -> float:
        return max(0.0, time.monotonic() - self.last_heard)

    def stale_reason(self, max_age: float) -> str | None:
        """Why the view is not current, naming the figure and the bound; None while it is."""
        age = self.age()
        if age > max_age:
            return (
                f"no sign of life from the upstream exchange for {age:.1f} s (data age bound {max_age:g} s)"
            )
        if self.upstream_lag > max_age:
            return (
                f"the connector reads the upstream {self.upstream_lag:.1f} s behind the exchange "
                f"(upstream lag bound {max_age:g} s)"
            )
        return None


__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_PROBE_AFTER_S",
    "DEFAULT_SUBSCRIBER_MAX_LAG_S",
    "Freshness",
    "FreshnessPolicy",
]
