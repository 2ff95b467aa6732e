"""Event loops for the harness's own clients and baselines: uvloop where installed (as the programs
under test are likely to use), else asyncio; one choice for every SUT, so figures compare."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
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


def serve_program(
    choice: str, serve: Callable[[Callable[[int], None], asyncio.Event], Awaitable[None]]
) -> int:
    """Run a baseline's server as a program: `serve(ready, stopping)` on a loop of the chosen kind,
    a JSON `ready` line (port, pid, loop) on stdout once it listens, until SIGTERM or SIGINT."""
    loop = new_event_loop(choice)

    async def run() -> None:
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)

        def ready(port: int) -> None:
            event = {"event": "ready", "port": port, "pid": os.getpid(), "loop": type(loop).__module__}
            print(json.dumps(event), flush=True)

        await serve(ready, stopping)

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0
