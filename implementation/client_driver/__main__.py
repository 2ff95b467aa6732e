"""The reference client driver: `python -m implementation.client_driver` (docs/client-driver.md).

Reads commands from stdin until end of input, then closes everything and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import grpc

from implementation.client_driver.events import Emitter, now_ms
from implementation.client_driver.session import Driver

PROTOCOL_VERSION = 1
LINE_LIMIT = 1 << 20  # a command is one line of at most 1 MiB


async def serve(emitter: Emitter) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver(emitter)
    emitter.emit(
        "ready",
        protocol=PROTOCOL_VERSION,
        library="RemoteExchange (implementation.client_library.remote_exchange)",
        language=f"python {sys.version.split()[0]}",
        grpc=grpc.__version__,
    )
    running: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
        except ValueError as exc:
            emitter.emit(
                "error", kind="bad_command", code="", details="", message=f"not a command: {exc}", took_ms=0.0
            )
            continue
        task = loop.create_task(driver.handle(command))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running, return_exceptions=True)
    await driver.shutdown()
    logging.getLogger(__name__).info("end of input after %.0f ms: closed", now_ms())


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(Emitter()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
