"""A TCP relay in front of the mock exchange that can stop moving bytes: the effect of SIGSTOP.

Frozen, the relay reads nothing and writes nothing, in either direction, on every connection, and
opens no new one: the peer's data and HTTP/2 pings pile up in the socket buffers and nothing comes
back, exactly as when the exchange's process is stopped with its sockets still open. Thawed, the
bytes held flow again in order. It runs on the mock exchange's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 65536


class FreezableRelay:
    """Relays 127.0.0.1:<port> to the server at 127.0.0.1:<target>; freeze() and thaw() on its loop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); the bound port."""
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def stop(self) -> None:
        """Close the listener and every relayed connection."""
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._flowing.wait()  # a frozen process accepts no connection either
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, asyncio.CancelledError):
            self._writers.discard(writer)
            writer.close()
            return
        self._writers.add(up_writer)
        loop = asyncio.get_running_loop()
        pumps = [
            loop.create_task(self._pump(reader, up_writer)),
            loop.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        flowing = self._flowing
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                await flowing.wait()
                data = await source.read(CHUNK)
                if not data:
                    return
                await flowing.wait()  # bytes read just as the freeze came are held too
                sink.write(data)
                await sink.drain()


__all__ = ["FreezableRelay"]
