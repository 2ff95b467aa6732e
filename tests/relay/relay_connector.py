"""A transparent bytes-level relay in front of a connector program: the control that shows the suite
judges what the contract says, not how one implementation happens to write its bytes.

    python relay_connector.py --listen 127.0.0.1:PORT -- CONNECTOR COMMAND (with @PORT@ for its own port)

It picks a free loopback port for the connector, starts the connector command with `@PORT@` filled
in, and copies bytes both ways between every client of --listen and the connector, as they come.
On SIGTERM/SIGINT it passes the signal on, keeps relaying while the connector shuts down (so the
statuses it sends still reach the clients) and exits with the connector's exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

CHUNK = 65536
PORT_MARK = "@PORT@"  # not a manifest placeholder: the relay fills it in


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def relay(port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_writer.transport.abort()
        return
    await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer))
    for writer in (client_writer, upstream_writer):
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def main_async(listen: str, child: subprocess.Popen[bytes], port: int) -> int:
    host, _, listen_port = listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: relay(port, r, w), host, int(listen_port))
    # The process's own handlers, not the loop's: the loop resets its handlers to the default (which
    # kills) when they are removed or it closes, and a late signal would end the relay with -15.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: child.send_signal(number))
    code = await asyncio.to_thread(child.wait)
    for signum in (signal.SIGTERM, signal.SIGINT):  # a late signal must not end the relay with another code
        signal.signal(signum, signal.SIG_IGN)
    server.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("expected the connector's command after --")
    port = free_port()
    child = subprocess.Popen([part.replace(PORT_MARK, str(port)) for part in command])
    return asyncio.run(main_async(options.listen, child, port))


if __name__ == "__main__":
    sys.exit(main())
