"""Log lines an untrusted peer can cause, at most one per interval, each saying how many it stands for.

A client sending wrong tokens or garbage as fast as it can must not fill the disk or drown the
other lines: the counters (metrics) count every event, the log says it happens.
"""

from __future__ import annotations

import logging
import time

from implementation.logs import log_event

DEFAULT_INTERVAL_S = 10.0


class LimitedLog:
    """log() writes the event at once, then at most once per `interval` s with `suppressed` = the
    events left out since the line before."""

    def __init__(self, logger: logging.Logger, event: str, interval: float = DEFAULT_INTERVAL_S) -> None:
        self._logger = logger
        self._event = event
        self._interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def log(self, level: int = logging.WARNING, **fields: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        log_event(self._logger, self._event, level=level, suppressed=suppressed, **fields)


__all__ = ["DEFAULT_INTERVAL_S", "LimitedLog"]
