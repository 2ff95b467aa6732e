"""market_maker's heartbeat file: the running program rewrites it every second with its status,
and `market_maker health` (a container health check) reads it back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

from implementation.state import LiveState

INTERVAL_S = 1.0
DEFAULT_MAX_AGE_S = 10.0


def write(path: Path, state: LiveState) -> None:
    body = {
        "status": "ok" if state.ready else "not ready",
        "reason": state.not_ready_reason,
        "time": time.time(),
        "pid": os.getpid(),
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(body), encoding="utf-8")
    os.replace(temporary, path)  # readers never see half a file


async def beat(path: Path, state: LiveState) -> None:
    while True:
        write(path, state)  # a few bytes to a local file: not worth a thread
        await asyncio.sleep(INTERVAL_S)


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def check(path: Path, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> tuple[bool, str]:
    """(healthy, why): healthy when the file says "ok" and is at most max_age_s old."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return False, f"no readable heartbeat at {path}: {exc}"
    age = time.time() - float(body.get("time", 0))
    if age > max_age_s:
        return False, f"heartbeat at {path} is {age:.1f} s old (max {max_age_s:g} s): not running?"
    if body.get("status") != "ok":
        return False, f"not ready: {body.get('reason') or 'unknown reason'}"
    return True, "ok"
