"""The §7.1 soak run: a connector, clients that restart at random, steady updates, periodic snapshots.

Load: account updates every 5 s and position updates every 1 s on the mock exchange (faster through
SOAK_ACCOUNT_INTERVAL / SOAK_POSITION_INTERVAL, in seconds). Clients: market_maker-like and
live_server-like simulated clients in the test process (harness/perf/clientsim.py; every delivery timed
and sequence-checked), plus the SUT's real market_maker and live_server programs. Every
SOAK_RESTART_INTERVAL seconds on average (uniformly 0.5x to 1.5x), one client or program, chosen at
random, is stopped and started again, as a deployment would do; a program must exit cleanly. No
restart happens in the first and last snapshot intervals, whose latencies are compared.

Every SOAK_SNAPSHOT_INTERVAL seconds a snapshot goes to a JSON lines file: the connector's RSS,
threads, fds and CPU, the test process's RSS, threads, asyncio tasks and fds, the cumulative
operations and errors, and the update latency p50/p99 of that interval.

Errors: lost, reordered or duplicated updates, invalid messages, stream breaks the soak did not
cause, and failed GetAccount/GetPositions polls. Operations: updates due to each client plus polls.

Accelerated runs (SOAK_SPEEDUP=N or --soak-speedup N): the updates, the simulated clients' polls and
the restarts come N times as often, so a run of wall time D carries the events of D x N of real
time (24 h of events at N=24 in 1 h). The snapshot interval stays in wall time. The SUT's real
market_maker and live_server programs keep their own pace between restarts. Each snapshot also
says the equivalent time (`t_equiv_s`), the events so far, and the restarts since the previous
snapshot (`restart_events`: when and what), so a plot can mark them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.clientsim import SimulatedClient, prime, start_all, stop_all
from harness.perf.loadgen import merged
from harness.perf.probes import ResourceSnapshot
from harness.tagged_updates import tagged_account, tagged_position

RUN = 1
RESTART_ALLOWANCE_S = 10.0  # a program restart takes a few seconds; none may spill into the last interval


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    from harness.perf.durations import parse_duration

    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be a positive duration, got {value!r}")
    return seconds


@dataclass(frozen=True)
class SoakConfig:
    """Intervals are wall-clock seconds, already divided by `speedup` where they scale."""

    duration_s: float
    account_interval_s: float = 5.0
    position_interval_s: float = 1.0
    snapshot_interval_s: float = 60.0
    restart_interval_s: float = 120.0
    poll_interval_s: float = 1.0
    speedup: float = 1.0
    market_makers: int = 3
    live_servers: int = 2
    seed: int = 0

    @property
    def equivalent_s(self) -> float:
        """The real time whose events the run carries."""
        return self.duration_s * self.speedup

    @classmethod
    def from_env(cls, duration_s: float, speedup: float = 1.0) -> SoakConfig:
        # short runs still get at least ~10 snapshots and ~5 restarts (counted in equivalent time)
        equivalent = duration_s * speedup
        return cls(
            duration_s=duration_s,
            account_interval_s=_env_seconds("SOAK_ACCOUNT_INTERVAL", 5.0) / speedup,
            position_interval_s=_env_seconds("SOAK_POSITION_INTERVAL", 1.0) / speedup,
            snapshot_interval_s=_env_seconds("SOAK_SNAPSHOT_INTERVAL", max(5.0, min(60.0, duration_s / 10))),
            restart_interval_s=_env_seconds("SOAK_RESTART_INTERVAL", max(5.0, min(120.0, equivalent / 5)))
            / speedup,
            poll_interval_s=1.0 / speedup,
            speedup=speedup,
            seed=int(os.environ.get("SOAK_SEED", "0") or 0) or int(time.time()),
        )


def client_totals(client: SimulatedClient) -> tuple[int, dict[str, int]]:
    """(operations, errors by kind) of one client so far."""
    counts = client.counts()
    errors = {
        "lost": counts.lost,
        "reordered": counts.reordered,
        "duplicated": counts.duplicates,
        "invalid": counts.invalid,
        "poll_failed": counts.poll_errors,
        "stream_broken": counts.stream_errors,
    }
    operations = counts.account_received + counts.position_received + counts.lost + counts.poll_calls
    return operations, errors


@dataclass
class Tally:
    """Operations and errors of the clients retired so far (restarted, or stopped at the end)."""

    operations: int = 0
    restarts: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.errors_by_kind.values())

    def retire(self, client: SimulatedClient) -> None:
        operations, errors = client_totals(client)
        self.operations += operations
        for kind, count in errors.items():
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + count


class SoakRun:
    """Drives one soak run; `snapshots` holds what was written to the JSON lines file."""

    def __init__(
        self,
        config: SoakConfig,
        mock: MockExchangeServer,
        connector: Any,
        snapshots_path: Path,
        *,
        start_program: Callable[[str], Any] | None = None,
    ) -> None:
        self.config = config
        self.mock = mock
        self.connector = connector
        self.path = snapshots_path
        self.rng = random.Random(config.seed)
        self.tally = Tally()
        self.snapshots: list[dict[str, Any]] = []
        self.accounts_sent = 0
        self.positions_sent = 0
        self.position_sent_ns: dict[int, int] = {}
        self.clients: list[SimulatedClient] = []
        self.programs: dict[str, Any] = {}
        self.program_exits: list[str] = []
        self.restart_events: list[dict[str, Any]] = []  # since the last snapshot
        self.restarting: set[str] = set()  # programs the soak is restarting right now
        self._start_program = start_program
        self._started = 0.0
        self._last_cpu = (0.0, 0.0)

    # ------------------------------------------------------------------------------ set-up

    def _new_client(self, kind: str, index: int, *, first_seq: int | None) -> SimulatedClient:
        return SimulatedClient(
            self.connector.address, kind, run=RUN, name=f"{kind}-{index}", first_seq=first_seq,
            position_sent_ns=self.position_sent_ns, poll_interval=self.config.poll_interval_s,
        )  # fmt: skip

    async def start(self) -> None:
        kinds = ["market_maker"] * self.config.market_makers + ["live_server"] * self.config.live_servers
        self.clients = [self._new_client(kind, i, first_seq=1) for i, kind in enumerate(kinds)]
        await start_all(self.clients)
        await prime(self.mock, self.clients)
        if self._start_program is not None:
            for name in ("market_maker", "live_server"):
                self.programs[name] = await asyncio.to_thread(self._start_program, name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")
        self._started = time.monotonic()

    async def stop(self) -> None:
        await stop_all(self.clients)
        for client in self.clients:
            self.tally.retire(client)
        self.clients = []
        for name, program in self.programs.items():
            code = await asyncio.to_thread(program.stop)
            if code != 0:
                self.program_exits.append(f"{name} exited with code {code} at the end of the soak")
        self.programs = {}

    # ------------------------------------------------------------------------------ the run

    async def run(self) -> None:
        """Until the duration has passed: updates, random restarts, snapshots."""
        tasks = [
            asyncio.create_task(self._every(self.config.account_interval_s, self._send_account), name="accounts"),
            asyncio.create_task(self._every(self.config.position_interval_s, self._send_position), name="positions"),
            asyncio.create_task(self._restarts(), name="restarts"),
        ]  # fmt: skip
        self._last_cpu = (time.monotonic(), _cpu_seconds(self.connector.pid))
        try:
            next_snapshot = self._started + self.config.snapshot_interval_s
            end = self._started + self.config.duration_s
            while True:
                await asyncio.sleep(max(0.0, min(next_snapshot, end) - time.monotonic()))
                for task in tasks:
                    if task.done():
                        task.result()  # a failure inside the run surfaces here
                self.snapshot()
                if time.monotonic() >= end - 1e-3:
                    break
                next_snapshot += self.config.snapshot_interval_s
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(self, interval: float, action: Callable[[], None]) -> None:
        started = time.monotonic()
        ticks = 0
        while True:
            action()
            ticks += 1
            await asyncio.sleep(max(0.0, started + ticks * interval - time.monotonic()))

    def _send_account(self) -> None:
        self.accounts_sent += 1
        self.mock.trigger_account_update(tagged_account(RUN, self.accounts_sent))

    def _send_position(self) -> None:
        self.positions_sent += 1
        self.position_sent_ns[self.positions_sent] = time.time_ns()
        self.position_sent_ns.pop(self.positions_sent - 10_000, None)  # bounded: only recent ones matter
        self.mock.trigger_position_update(tagged_position(RUN, self.positions_sent))

    async def _restarts(self) -> None:
        # The first and last snapshot intervals stay free of restarts: comparing their latency then
        # shows drift of the steady state (leaks, growing queues), not the cost of one restart.
        quiet = self.config.snapshot_interval_s
        while True:
            await asyncio.sleep(self.config.restart_interval_s * self.rng.uniform(0.5, 1.5))
            elapsed = time.monotonic() - self._started
            if elapsed < quiet or elapsed > self.config.duration_s - quiet - RESTART_ALLOWANCE_S:
                continue
            choices = len(self.clients) + len(self.programs)
            pick = self.rng.randrange(choices)
            if pick < len(self.clients):
                what = self.clients[pick].name
                await self._restart_client(pick)
            else:
                what = sorted(self.programs)[pick - len(self.clients)]
                await self._restart_program(what)
            self.tally.restarts += 1
            self.restart_events.append({"t_s": round(elapsed, 3), "what": what})

    async def _restart_client(self, index: int) -> None:
        old = self.clients[index]
        await old.stop()
        self.tally.retire(old)
        new = self._new_client(old.kind, index, first_seq=None)  # joins mid-stream
        self.clients[index] = new
        await new.start()

    async def _restart_program(self, name: str) -> None:
        assert self._start_program is not None
        self.restarting.add(name)  # down on purpose: a snapshot meanwhile must not count it as down
        try:
            code = await asyncio.to_thread(self.programs[name].stop)
            if code != 0:
                self.program_exits.append(f"{name} exited with code {code} when restarted")
            self.programs[name] = await asyncio.to_thread(self._start_program, name)
        finally:
            self.restarting.discard(name)

    # ------------------------------------------------------------------------------ snapshots

    @property
    def events(self) -> int:
        """The soak's events so far: updates sent and restarts."""
        return self.accounts_sent + self.positions_sent + self.tally.restarts

    def live_totals(self) -> tuple[int, int]:
        operations, errors = self.tally.operations, self.tally.errors
        for client in self.clients:
            ops, errs = client_totals(client)
            operations, errors = operations + ops, errors + sum(errs.values())
        return operations, errors

    def snapshot(self) -> dict[str, Any]:
        server = ResourceSnapshot.take(self.connector.pid)
        client = ResourceSnapshot.take()
        now, cpu = time.monotonic(), _cpu_seconds(self.connector.pid)
        cpu_pct = 100.0 * (cpu - self._last_cpu[1]) / max(1e-9, now - self._last_cpu[0])
        self._last_cpu = (now, cpu)
        latency = merged((c.reset_interval() for c in self.clients), "interval")
        operations, errors = self.live_totals()
        events, self.restart_events = self.restart_events, []
        record: dict[str, Any] = {
            "t_s": round(now - self._started, 3),
            "t_equiv_s": round((now - self._started) * self.config.speedup, 3),
            "speedup": self.config.speedup,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "server_rss_mb": round(server.rss_mb, 3),
            "server_threads": server.os_threads,
            "server_fds": server.fds,
            "server_cpu_pct": round(cpu_pct, 2),
            "client_rss_mb": round(client.rss_mb, 3),
            "client_threads": client.threads,
            "client_tasks": client.tasks,
            "client_fds": client.fds,
            "operations": operations,
            "errors": errors,
            "error_rate_pct": round(100.0 * errors / operations, 6) if operations else 0.0,
            "latency_samples": latency.count,
            "latency_p50_ms": latency.p_ms(50) if latency.count else None,
            "latency_p99_ms": latency.p_ms(99) if latency.count else None,
            "restarts": self.tally.restarts,
            "restart_events": events,
            "events": self.events,
            "accounts_sent": self.accounts_sent,
            "positions_sent": self.positions_sent,
            "connector_running": self.connector.running,
            "programs_running": {
                name: p.running or name in self.restarting for name, p in self.programs.items()
            },
            "programs_restarting": sorted(self.restarting),
        }
        self.snapshots.append(record)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        return record


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
