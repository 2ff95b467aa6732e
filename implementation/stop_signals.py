"""SIGTERM and SIGINT as a graceful stop, for every program of the reference.

The handlers are the process's own (signal.signal), not the event loop's: a loop resets the
handlers it owns to the default, which kills, when they are removed and again when it closes, and
a stop signal landing in either window would end a graceful shutdown with -15. uvloop (and asyncio
once any loop handler exists) wakes its loop through the interpreter's wakeup fd, so the handler
runs at once.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; a second signal changes nothing (the stop is under way)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        if not loop.is_closed():  # a signal after the loop is gone: the program is already ending
            loop.call_soon_threadsafe(event.set)

    for number in STOP_SIGNALS:
        signal.signal(number, on_signal)
    return event


def ignore_stop_signals() -> None:
    """From here on a stop signal is ignored: one swap from our handler, no default in between."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
