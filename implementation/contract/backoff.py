"""How a broken connection or stream is retried: exponential backoff with jitter. Both the
connector (its upstream) and the client library (their streams) retry this way, so the policy
belongs to neither."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a broken stream is retried: attempt n waits
    min(max_backoff, initial_backoff * multiplier ** (n - 1)) * (1 ± jitter) seconds, and
    returns earlier when the channel reports it is connected again."""

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None  # consecutive failed attempts before giving up; None = never

    def __post_init__(self) -> None:
        if self.initial_backoff <= 0:
            raise ValueError(f"initial_backoff must be > 0 s, got {self.initial_backoff}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff must be >= initial_backoff ({self.initial_backoff} s), got {self.max_backoff}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number `attempt` (1 = the first retry)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(attempt - 1, 0))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1 + spread)
