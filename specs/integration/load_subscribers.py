"""Many account subscribers in a process of their own, for the overload scenarios.

    python -m specs.integration.load_subscribers ADDRESS SECONDS PROBES LOAD

LOAD subscribers are plain grpcio streams with the default channel options: they read as fast as
they can, and their transports take in whatever the connector sends (megabytes ahead of the
application), so the connector never feels them as slow readers. PROBES subscribers have a
transport that holds little ahead of them (BDP probing off, 1 KB look-ahead), so the age of what
they receive (receipt time less `updated_at`) is the age of what the connector sends, not how far
behind they read themselves. Each resubscribes 0.2 s after its stream ends.

The process proves its own capacity as it reads: a heartbeat on its event loop measures how late
the loop runs (a loop busy with a backlog of its own runs late, and then the ages it reads include
that backlog, which is the harness's, not the connector's), and it reports the CPU it used. At the
end one JSON line: messages (all), the probes' age percentiles and maximum, how the streams ended,
the loop's worst lateness and the process's CPU share.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from typing import cast

import grpc

from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

PROBE_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
RESUBSCRIBE_S = 0.2
HEARTBEAT_S = 0.01


async def _subscriber(
    address: str, until: float, ages: list[float], ended: Counter[str], probe: bool, counted: list[int]
) -> None:
    # a channel each: one connection per client, as separate client programs would have
    async with grpc.aio.insecure_channel(address, options=PROBE_OPTIONS if probe else None) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        while time.monotonic() < until:
            call = stub.SubscribeAccount(pb.SubscribeAccountRequest())
            try:
                while time.monotonic() < until:
                    message = await asyncio.wait_for(call.read(), max(0.1, until - time.monotonic()))
                    if message is grpc.aio.EOF:
                        ended["EOF"] += 1
                        break
                    counted[0] += 1
                    if probe:
                        stamp = cast(pb.Account, message).updated_at
                        ages.append(time.time() - (stamp.seconds + stamp.nanos * 1e-9))
            except grpc.aio.AioRpcError as exc:
                ended[exc.code().name] += 1
            except asyncio.TimeoutError:
                pass
            finally:
                call.cancel()
            await asyncio.sleep(RESUBSCRIBE_S * (0.5 + random.random()))


async def _heartbeat(until: float, lateness: list[float]) -> None:
    """How late this process's loop runs: the worst oversleep of a 10 ms beat."""
    while time.monotonic() < until:
        started = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S)
        lateness[0] = max(lateness[0], time.monotonic() - started - HEARTBEAT_S)


async def run(address: str, seconds: float, probes: int, load: int) -> dict[str, object]:
    until = time.monotonic() + seconds
    ages: list[float] = []
    ended: Counter[str] = Counter()
    counted = [0]
    lateness = [0.0]
    kinds = [True] * probes + [False] * load
    cpu_started, wall_started = time.process_time(), time.monotonic()
    await asyncio.gather(
        _heartbeat(until, lateness),
        *(_subscriber(address, until, ages, ended, probe, counted) for probe in kinds),
    )
    cpu_share = (time.process_time() - cpu_started) / max(time.monotonic() - wall_started, 1e-3)
    ages.sort()

    def pick(q: float) -> float:
        return ages[min(len(ages) - 1, int(q * len(ages)))] if ages else 0.0

    return {
        "messages": counted[0],
        "probe_messages": len(ages),
        "age_p50_s": pick(0.5),
        "age_p99_s": pick(0.99),
        "age_max_s": ages[-1] if ages else 0.0,
        "ended": dict(ended),
        "loop_late_max_s": lateness[0],
        "cpu_share": cpu_share,
    }


def main() -> int:
    address, seconds, probes, load = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(run(address, seconds, probes, load))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
