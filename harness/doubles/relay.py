"""The bare relay baseline: the fair limit for a two-hop design.

The bare baseline (harness.doubles.baseline) writes updates it makes itself: one hop. A connector
relays: the exchange writes, the connector reads and writes again. The relay does exactly that and
nothing more, on the same contract: one SubscribeAccount and one SubscribePositions stream to the
upstream (the mock exchange, or the bare baseline), each message written on, unchanged and
unvalidated, to every subscriber of this server, each from its own unbounded queue. No hub, no
state, no symbol filter, no slow-subscriber policy. GetAccount and GetPositions are passed through
to the upstream (two hops, like the connector's cold path).

Run as a program (``python -m harness.doubles.relay --upstream HOST:PORT --port 0``), which prints
``{"event": "ready", "port": N}`` once serving and its upstream streams are open; ``RelayProcess``
starts and stops it for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from harness.doubles.baseline import BaselineProcess
from harness.loops import LOOPS, serve_program
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

RECONNECT_S = 0.2
UPSTREAM_TIMEOUT_S = 5.0


class Relay:
    """The subscribers of one upstream stream; `run` reads it and queues each message to them all."""

    def __init__(self, name: str, open_stream: Callable[[], Any]) -> None:
        self.name = name
        self._open = open_stream
        self.subscribers: set[asyncio.Queue[Any]] = set()
        self.opened = asyncio.Event()

    async def run(self) -> None:
        while True:
            call = self._open()
            try:
                await call.wait_for_connection()
                self.opened.set()
                async for message in call:
                    for queue in self.subscribers:
                        queue.put_nowait(message)
            except grpc.aio.AioRpcError:
                pass  # the upstream went away: open the stream again
            finally:
                call.cancel()
            await asyncio.sleep(RECONNECT_S)

    async def serve(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            while True:
                await context.write(await queue.get())
        finally:
            self.subscribers.discard(queue)


class RelayServicer(pb_grpc.ExchangeServiceServicer):
    def __init__(self, upstream: Any) -> None:
        self.upstream = upstream  # an ExchangeServiceStub on a grpc.aio channel
        self.accounts = Relay("account", lambda: upstream.SubscribeAccount(pb.SubscribeAccountRequest()))
        self.positions = Relay(
            "positions", lambda: upstream.SubscribePositions(pb.SubscribePositionsRequest())
        )

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Account:
        account: pb.Account = await self.upstream.GetAccount(request, timeout=UPSTREAM_TIMEOUT_S)
        return account

    async def GetPositions(
        self, request: pb.GetPositionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPositionsResponse:
        positions: pb.GetPositionsResponse = await self.upstream.GetPositions(
            request, timeout=UPSTREAM_TIMEOUT_S
        )
        return positions

    async def SubscribeAccount(  # type: ignore[override]
        self, request: pb.SubscribeAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self.accounts.serve(context)

    async def SubscribePositions(  # type: ignore[override]
        self, request: pb.SubscribePositionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self.positions.serve(context)


async def serve(
    host: str, port: int, upstream: str, ready: Callable[[int], None], stopping: asyncio.Event
) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    servicer = RelayServicer(pb_grpc.ExchangeServiceStub(channel))
    readers = [asyncio.create_task(relay.run()) for relay in (servicer.accounts, servicer.positions)]
    server = grpc.aio.server()
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        await asyncio.wait_for(
            asyncio.gather(servicer.accounts.opened.wait(), servicer.positions.opened.wait()),
            UPSTREAM_TIMEOUT_S,
        )
        ready(bound)
        await stopping.wait()
    finally:
        await server.stop(0.5)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await channel.close()


class RelayProcess(BaselineProcess):
    """The relay as a separate program reading from `upstream`, measured over loopback like the connector."""

    def __init__(
        self, upstream: str, host: str = "127.0.0.1", loop: str = "auto", log_path: Path | None = None
    ) -> None:
        super().__init__(host=host, loop=loop, log_path=log_path)
        self.upstream = upstream

    def command(self) -> list[str]:
        return [sys.executable, "-m", "harness.doubles.relay", "--upstream", self.upstream]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.doubles.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the ExchangeService to relay")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free port)")
    parser.add_argument(
        "--loop", choices=LOOPS, default="auto", help="event loop (default: uvloop when installed)"
    )
    args = parser.parse_args(argv)
    return serve_program(
        args.loop, lambda ready, stopping: serve(args.host, args.port, args.upstream, ready, stopping)
    )


__all__ = ["RelayProcess"]

if __name__ == "__main__":
    sys.exit(main())
