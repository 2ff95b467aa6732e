"""Event loops for the harness's own clients and baselines: uvloop where installed (as the programs
under test are likely to use), else asyncio; one choice for every SUT, so figures compare."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

LOOPS = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


def new_event_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    """An event loop of the chosen kind ('auto': uvloop when installed)."""
    if choice not in LOOPS:
        raise ValueError(f"loop {choice!r} is not one of {', '.join(LOOPS)}")
    if choice != "asyncio":
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
        except ImportError:
            if choice == "uvloop":
                raise
    return asyncio.new_event_loop()


def run(coroutine: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """asyncio.run on a loop of the chosen kind."""
    loop = new_event_loop(choice)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
