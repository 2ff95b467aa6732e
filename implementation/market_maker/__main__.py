"""market_maker: connects to the exchange connector (current_exchange: remote), keeps the latest
account and positions, and logs every update as one JSON line on stderr.

    python -m implementation.market_maker --config market_maker.yaml [--health-file PATH]
    python -m implementation.market_maker health (--config FILE | --health-file PATH) [--max-age 10]

Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad command line or configuration, 1 for a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from implementation.clients import (
    UpdateLog,
    add_connection_options,
    build_exchange,
    load_or_exit,
    run,
    setup_logging,
)
from implementation.config import MARKET_MAKER_ENV_PREFIX, ConfigError, MarketMakerConfig
from implementation.follower import StateFollower
from implementation.logs import log_event
from implementation.market_maker import heartbeat
from implementation.state import LiveState
from implementation.stop_signals import ignore_stop_signals, stop_event

PROGRAM = "market_maker"
_log = logging.getLogger("market_maker")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Follow the account through the exchange connector."
    )
    parser.add_argument(
        "--config", type=Path, help="YAML config file (keys may also come from MARKET_MAKER_* env)"
    )
    parser.add_argument("--health-file", type=Path, help="write a heartbeat here for `market_maker health`")
    add_connection_options(parser)
    commands = parser.add_subparsers(dest="command")
    health = commands.add_parser("health", help="exit 0 if a running market_maker reports ready")
    health.add_argument("--config", type=Path, dest="health_config", help="config naming the health_file")
    health.add_argument("--health-file", type=Path, dest="health_path", help="the heartbeat file")
    health.add_argument(
        "--max-age", type=float, default=heartbeat.DEFAULT_MAX_AGE_S, help="seconds (default 10)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "health":
        return _health(args)
    config = load_or_exit(PROGRAM, MarketMakerConfig, args, MARKET_MAKER_ENV_PREFIX)
    if isinstance(config, int):
        return config
    setup_logging(config)
    return run(serve(config, health_file=args.health_file or config.health_file))


def _health(args: argparse.Namespace) -> int:
    path: Path | None = args.health_path
    if path is None and args.health_config is not None:
        config = load_or_exit(PROGRAM, MarketMakerConfig, args, MARKET_MAKER_ENV_PREFIX, args.health_config)
        if isinstance(config, int):
            return config
        path = config.health_file
    if path is None:
        print(f"{PROGRAM} health: give --health-file, or --config with a health_file key", file=sys.stderr)
        return 2
    healthy, reason = heartbeat.check(path, max_age_s=args.max_age)
    print(f"{PROGRAM}: {reason}", file=sys.stderr if not healthy else sys.stdout)
    return 0 if healthy else 1


async def serve(config: MarketMakerConfig, *, health_file: Path | None = None) -> int:
    try:
        exchange = build_exchange(config, logging.getLogger("market_maker.exchange"))
    except ConfigError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    stop = stop_event()
    state = LiveState()
    UpdateLog(state, _log, config.log)
    follower = StateFollower(exchange, state, logger=_log)
    log_event(_log, "starting", address=config.exchange_grpc_address, tls=str(config.tls is not None))
    tasks = {asyncio.ensure_future(follower.run()), asyncio.ensure_future(stop.wait())}
    if health_file is not None:
        tasks.add(asyncio.ensure_future(heartbeat.beat(health_file, state)))
    code = 0
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                log_event(_log, "failed", level=logging.ERROR, reason=f"{type(failure).__name__}: {failure}")
                code = 1
        log_event(_log, "shutdown_started")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await follower.stop()
        if health_file is not None:
            heartbeat.remove(health_file)
        ignore_stop_signals()
    log_event(_log, "shutdown_complete", updates=str(state.updates), resyncs=str(follower.resyncs))
    return code


if __name__ == "__main__":
    sys.exit(main())
