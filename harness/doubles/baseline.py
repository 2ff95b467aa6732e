"""The bare baseline: an ExchangeService with the same contract and no logic at all.

Every benchmark measures it with the same client code as the connector under test, in the same
run, so each figure can also be given as a ratio to what grpcio alone achieves on this machine.

* GetAccount / GetPositions answer a fixed §8 account / position list.
* SubscribeAccount / SubscribePositions write tagged updates (see harness.perf.loadgen) in a tight
  ``await context.write(...)`` loop. The request's metadata says how many and how fast:
  ``x-bench-count`` (0 or absent: until the client cancels), ``x-bench-rate`` (updates/s; 0 or
  absent: as fast as possible) and ``x-bench-run`` (the run number in the tags). A connector
  ignores this metadata, so the client code is the same for both.
* ``x-bench-group: N`` (N > 1, with a count) makes N streams of the same plan a fan-out group:
  once all N have subscribed, one paced generator builds each update once and queues it to every
  member, each member writing from its own queue. That is the least any fan-out server does, so
  the connector's fan-out is compared with fan-out, not with N unrelated streams.

Runs in-process on its own thread and loop (``BaselineServer``), or as a program
(``python -m harness.doubles.baseline --port 0``, which prints one JSON line ``{"event": "ready", "port": N}``
on stdout once serving; ``BaselineProcess`` starts and stops it for tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from harness.loops import LOOPS, new_event_loop, serve_program
from harness.tagged_updates import Schedule, tagged_account, tagged_position
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

COUNT_KEY = "x-bench-count"
RATE_KEY = "x-bench-rate"
RUN_KEY = "x-bench-run"
GROUP_KEY = "x-bench-group"


@dataclass(frozen=True)
class StreamPlan:
    """How many tagged updates a baseline stream writes, how fast, and with which run number."""

    count: int = 0
    rate: float = 0.0
    run: int = 1
    group: int = 1  # streams that share one generator (a fan-out group)

    @classmethod
    def from_metadata(cls, metadata: Any) -> StreamPlan:
        """The plan in a call's metadata (pairs of key and value); defaults for what is absent."""
        values = {str(key): str(value) for key, value in (metadata or ())}
        return cls(
            count=int(values.get(COUNT_KEY, 0)),
            rate=float(values.get(RATE_KEY, 0.0)),
            run=int(values.get(RUN_KEY, 1)),
            group=int(values.get(GROUP_KEY, 1)),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (COUNT_KEY, str(self.count)),
            (RATE_KEY, repr(self.rate)),
            (RUN_KEY, str(self.run)),
            (GROUP_KEY, str(self.group)),
        )


FIXED_ACCOUNT = tagged_account(1, 0)
FIXED_POSITIONS = pb.GetPositionsResponse(positions=[tagged_position(1, 0), tagged_position(1, 0, "ETHUSDT")])


class _FanOutGroup:
    """Streams sharing one paced generator; each update is built once and queued to every member."""

    def __init__(self, plan: StreamPlan) -> None:
        self.plan = plan
        self.queues: list[asyncio.Queue[pb.Account | None]] = []

    async def generate(self) -> None:
        loop = asyncio.get_running_loop()
        schedule = Schedule(self.plan.rate)
        started = loop.time()
        try:
            for seq in range(1, self.plan.count + 1):
                if self.plan.rate > 0:
                    delay = schedule.due_at(seq) - (loop.time() - started)
                    if delay > 0:
                        await asyncio.sleep(delay)
                update = tagged_account(self.plan.run, seq)
                for queue in self.queues:
                    queue.put_nowait(update)
        finally:
            for queue in self.queues:
                queue.put_nowait(None)


class BaselineServicer(pb_grpc.ExchangeServiceServicer):
    def __init__(self) -> None:
        self._forming: dict[StreamPlan, _FanOutGroup] = {}
        self._generators: set[asyncio.Task[None]] = set()

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Account:
        return FIXED_ACCOUNT

    async def GetPositions(
        self, request: pb.GetPositionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPositionsResponse:
        return FIXED_POSITIONS

    async def SubscribeAccount(  # type: ignore[override]
        self, request: pb.SubscribeAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        plan = StreamPlan.from_metadata(context.invocation_metadata())
        if plan.group > 1 and plan.count > 0:
            await self._fan_out_member(context, plan)
        else:
            await _write_stream(context, plan, lambda seq: tagged_account(plan.run, seq))

    async def _fan_out_member(self, context: grpc.aio.ServicerContext[Any, Any], plan: StreamPlan) -> None:
        group = self._forming.setdefault(plan, _FanOutGroup(plan))
        queue: asyncio.Queue[pb.Account | None] = asyncio.Queue()
        group.queues.append(queue)
        if len(group.queues) >= plan.group:  # complete: start its generator, a later group starts afresh
            del self._forming[plan]
            task = asyncio.create_task(group.generate())
            self._generators.add(task)
            task.add_done_callback(self._generators.discard)
        while (update := await queue.get()) is not None:
            await context.write(update)

    async def SubscribePositions(  # type: ignore[override]
        self, request: pb.SubscribePositionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        plan = StreamPlan.from_metadata(context.invocation_metadata())
        symbol = request.symbol or "BTCUSDT"
        await _write_stream(context, plan, lambda seq: tagged_position(plan.run, seq, symbol))


async def _write_stream(
    context: grpc.aio.ServicerContext[Any, Any], plan: StreamPlan, make: Callable[[int], Any]
) -> None:
    loop = asyncio.get_running_loop()
    schedule = Schedule(plan.rate)
    started = loop.time()
    seq = 0
    while plan.count == 0 or seq < plan.count:
        seq += 1
        if plan.rate > 0:
            delay = schedule.due_at(seq) - (loop.time() - started)
            if delay > 0:
                await asyncio.sleep(delay)
        await context.write(make(seq))


async def serve(host: str, port: int, ready: Callable[[int], None], stopping: asyncio.Event) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExchangeServiceServicer_to_server(BaselineServicer(), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        ready(bound)
        await stopping.wait()
    finally:
        await server.stop(0.5)


class BaselineServer:
    """The baseline in this process, on its own thread and event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, loop: str = "auto") -> None:
        self.host, self.port, self.loop_kind = host, port, loop
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BaselineServer:
        if self._thread is not None:
            return self
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="baseline-server", daemon=True
        )
        self._thread.start()
        if not started.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"baseline server did not start on {self.address}: {self._error!r}")
        return self

    def _run(self, started: threading.Event) -> None:
        loop = new_event_loop(self.loop_kind)
        self._loop = loop

        def ready(port: int) -> None:
            self.port = port
            started.set()

        async def main() -> None:
            self._stopping = asyncio.Event()
            await serve(self.host, self.port, ready, self._stopping)

        try:
            loop.run_until_complete(main())
        except BaseException as error:
            self._error = error
            started.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        self._thread = None
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10.0)

    def __enter__(self) -> BaselineServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_Process = TypeVar("_Process", bound="BaselineProcess")


class BaselineProcess:
    """The baseline as a separate program, so it is measured over loopback exactly like the connector."""

    def __init__(self, host: str = "127.0.0.1", loop: str = "auto", log_path: Path | None = None) -> None:
        self.host, self.loop_kind, self.log_path = host, loop, log_path
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("baseline process not started")
        return self._process.pid

    def command(self) -> list[str]:
        """The program, without the listening address and loop options every double takes."""
        return [sys.executable, "-m", "harness.doubles.baseline"]

    def start(self: _Process, timeout: float = 15.0) -> _Process:
        command = [*self.command(), "--host", self.host, "--port", "0", "--loop", self.loop_kind]
        log = open(self.log_path or os.devnull, "ab")
        try:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=_repo_root())
        finally:
            log.close()
        try:
            self.port = self._read_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_ready(self, timeout: float) -> int:
        assert self._process is not None and self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], timeout)
        line = self._process.stdout.readline() if readable else b""
        if not line:
            code = self._process.poll()
            state = f"exited with code {code}" if code is not None else f"silent for {timeout} s"
            raise RuntimeError(f"baseline program not ready: {state}")
        return int(json.loads(line)["port"])

    def stop(self, timeout: float = 10.0) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return code

    def __enter__(self: _Process) -> _Process:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.doubles.baseline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free port)")
    parser.add_argument(
        "--loop", choices=LOOPS, default="auto", help="event loop (default: uvloop when installed)"
    )
    args = parser.parse_args(argv)
    return serve_program(args.loop, lambda ready, stopping: serve(args.host, args.port, ready, stopping))


__all__ = ["BaselineProcess", "BaselineServer", "StreamPlan"]

if __name__ == "__main__":
    sys.exit(main())
