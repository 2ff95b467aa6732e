"""live_server: follows the exchange connector (exchange_type: remote) and serves what it holds.

    python -m implementation.live_server --config live_server.yaml
    python -m implementation.live_server health --url http://127.0.0.1:8080/health [--timeout 2]

HTTP runs on uvicorn inside the same event loop as the gRPC streams. Exit codes: 0 after
SIGTERM/SIGINT, 2 for a bad command line or configuration, 1 when it cannot listen or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Generator, Sequence
from pathlib import Path

import uvicorn

from implementation.clients import (
    UpdateLog,
    add_connection_options,
    build_exchange,
    load_or_exit,
    run,
    setup_logging,
)
from implementation.config import LIVE_SERVER_ENV_PREFIX, ConfigError, LiveServerConfig
from implementation.follower import StateFollower
from implementation.live_server import guard as http_guard
from implementation.live_server.access import AccessPolicy
from implementation.live_server.app import create_app
from implementation.live_server.feed import Broadcaster, connect_state
from implementation.logs import log_event
from implementation.state import LiveState
from implementation.stop_signals import ignore_stop_signals, stop_event

PROGRAM = "live_server"
HTTP_SHUTDOWN_S = 3
_log = logging.getLogger("live_server")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Serve the account over HTTP, WebSocket and a dashboard."
    )
    parser.add_argument(
        "--config", type=Path, help="YAML config file (keys may also come from LIVE_SERVER_* env)"
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (overrides the config's listen)")
    add_connection_options(parser)
    commands = parser.add_subparsers(dest="command")
    health = commands.add_parser("health", help="exit 0 if GET URL answers 200 (for container health checks)")
    health.add_argument("--url", default="http://127.0.0.1:8080/health", help="the /health URL")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "health":
        return check_health(args.url, args.timeout)
    config = load_or_exit(PROGRAM, LiveServerConfig, args, LIVE_SERVER_ENV_PREFIX)
    if isinstance(config, int):
        return config
    setup_logging(config)
    return run(serve(config))


def check_health(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(f"{PROGRAM}: {response.status} {response.read().decode(errors='replace')}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{PROGRAM}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{PROGRAM}: cannot reach {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return 1


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the program's stop signals drive the shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(config: LiveServerConfig) -> int:
    try:
        exchange = build_exchange(config, logging.getLogger("live_server.exchange"))
    except ConfigError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    stop = stop_event()
    try:
        sock = bind(config.listen_host, config.listen_port)
    except OSError as exc:
        log_event(
            _log, "listen_failed", level=logging.ERROR, listen=config.listen, reason=exc.strerror or str(exc)
        )
        return 1
    host, port = sock.getsockname()[:2]
    state = LiveState()
    broadcaster = Broadcaster(config.ws_queue_size)
    connect_state(state, broadcaster)
    UpdateLog(state, _log, config.log)
    access = AccessPolicy(config.listen_host, config.allowed_hosts, config.allowed_origins)
    app = create_app(state, broadcaster, access=access)
    guard = http_guard.ConnectionGuard(config.http_header_timeout_s, config.max_connections)
    http_guard.raise_file_limit(config.max_connections)
    http_guard.silence_uvicorn_limit_lines()
    server = _Server(
        uvicorn.Config(
            app,
            http=http_guard.guarded_protocol(guard),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            ws_max_size=config.ws_max_message_bytes,
            limit_concurrency=config.max_connections,
            timeout_graceful_shutdown=HTTP_SHUTDOWN_S,
        )
    )
    follower = StateFollower(exchange, state, logger=_log)
    url_host = f"[{host}]" if ":" in host else host
    log_event(_log, "starting", address=config.exchange_grpc_address, tls=str(config.tls is not None))
    # The socket already listens: connections wait in its backlog until uvicorn takes them.
    log_event(_log, "listening", url=f"http://{url_host}:{port}/", port=str(port))
    http = asyncio.ensure_future(server.serve(sockets=[sock]))
    following = asyncio.ensure_future(follower.run())
    stopping = asyncio.ensure_future(stop.wait())
    code = 0
    try:
        done, _ = await asyncio.wait({http, following, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopping}:
            reason = "stopped" if task.cancelled() or task.exception() is None else repr(task.exception())
            log_event(
                _log,
                "failed",
                level=logging.ERROR,
                part="http" if task is http else "follower",
                reason=reason,
            )
            code = 1
        log_event(_log, "shutdown_started")
    finally:
        server.should_exit = True
        stopping.cancel()
        following.cancel()
        await asyncio.gather(following, stopping, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(http, HTTP_SHUTDOWN_S + 2)
        await follower.stop()
        sock.close()
        ignore_stop_signals()
    log_event(_log, "shutdown_complete", updates=str(state.updates), resyncs=str(follower.resyncs))
    return code


if __name__ == "__main__":
    sys.exit(main())
