"""What the two client programs (market_maker, live_server) share: the RemoteExchange built from
the config, the log events of state changes, the stop signals and the event loop runner."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from implementation.client_library.remote_exchange import ReconnectPolicy, RemoteExchange
from implementation.config import (
    SHARED_TOKEN_ENV,
    ClientSettings,
    ConfigError,
    LogSettings,
    TlsSettings,
    load_config,
)
from implementation.logs import configure_logging, log_event
from implementation.state import LiveState, StateChange, message_fields

ConfigT = TypeVar("ConfigT", bound=ClientSettings)
T = TypeVar("T")
# A restarted connector is found within ~2 s (gRPC's own channel backoff follows this cap too).
CLIENT_RECONNECT = ReconnectPolicy(initial_backoff=0.1, max_backoff=2.0)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Options that override the config file (so a launcher can add TLS or a token to any config)."""
    group = parser.add_argument_group("overrides of the config file")
    group.add_argument("--exchange-grpc-address", metavar="HOST:PORT", help="the exchange connector")
    group.add_argument(
        "--tls-ca", metavar="FILE", help="CA that signed the connector's certificate (enables TLS)"
    )
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate, for mutual TLS")
    group.add_argument("--tls-key", metavar="FILE", help="client private key, for mutual TLS")
    group.add_argument("--token", help="bearer token the connector expects (visible in ps: prefer the next)")
    group.add_argument(
        "--token-file", metavar="FILE", help=f"file holding the bearer token (or set {SHARED_TOKEN_ENV})"
    )
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    group.add_argument("--log-format", choices=["json", "text"])


def connection_overrides(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if args.exchange_grpc_address is not None:
        found["exchange_grpc_address"] = args.exchange_grpc_address
    # The command line's token replaces either form the config gives.
    if args.token is not None:
        found["token"], found["token_file"] = args.token, None
    if getattr(args, "token_file", None) is not None:
        found["token"], found["token_file"] = None, str(Path(args.token_file).absolute())
    if getattr(args, "listen", None) is not None:  # live_server only
        found["listen"] = args.listen
    # Paths from the command line are relative to the working directory, not to the config file.
    tls = {key: str(Path(value).absolute()) for key, value in
           (("ca_file", args.tls_ca), ("cert_file", args.tls_cert), ("key_file", args.tls_key)) if value}  # fmt: skip
    if tls:
        found["tls"] = tls
    log = {key: value for key, value in (("level", args.log_level), ("format", args.log_format)) if value}
    if log:
        found["log"] = log
    return found


def load_or_exit(
    program: str,
    model: type[ConfigT],
    args: argparse.Namespace,
    env_prefix: str,
    config_path: Path | None = None,
) -> ConfigT | int:
    """The config from --config, the environment and the options; or exit code 2 after printing
    the one-line problem to stderr."""
    path = config_path if config_path is not None else args.config
    overrides = connection_overrides(args) if hasattr(args, "tls_ca") else {}
    try:
        return load_config(model, path, env_prefix=env_prefix, overrides=overrides)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 2


def setup_logging(settings: ClientSettings) -> None:
    configure_logging(level=settings.log.level, format=settings.log.format)
    # The HTTP server's own chatter (startup banners, per-request lines) is not our log's business.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def build_exchange(settings: ClientSettings, logger: logging.Logger) -> RemoteExchange:
    """The client of the connector; ConfigError for settings it refuses (e.g. an unreadable PEM file)."""
    tls = settings.tls
    try:
        return _remote_exchange(settings, tls, logger)
    except ValueError as exc:
        raise ConfigError(f"config error: {exc}") from None


def _remote_exchange(
    settings: ClientSettings, tls: TlsSettings | None, logger: logging.Logger
) -> RemoteExchange:
    return RemoteExchange(
        settings.exchange_grpc_address,
        connect_timeout=settings.connect_timeout,
        call_timeout=settings.call_timeout,
        tls_ca=tls.ca_file if tls else None,
        tls_cert=tls.cert_file if tls else None,
        tls_key=tls.key_file if tls else None,
        token=settings.bearer_token,
        reconnect=CLIENT_RECONNECT,
        logger=logger,
    )


class UpdateLog:
    """Logs state changes as JSON lines: "ready" once, then "account_update" and "position_update"
    with every field as a string (a resync logs the whole state, with source="resync"), and
    "connector_lost" when the connection drops.

    Stream updates are logged each (`updates: every`) or sampled: at most one line per kind per
    `update_interval_s`, whose "updates" field counts the updates since the kind's last line."""

    def __init__(
        self,
        state: LiveState,
        logger: logging.Logger,
        settings: LogSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._log = logger
        settings = settings or LogSettings(updates="every")
        self._every = settings.updates == "every"
        self._interval = settings.update_interval_s
        self._clock = clock
        self._last_line: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self.ready_logged = False
        state.add_listener(self)

    def __call__(self, change: StateChange) -> None:
        if change.kind == "account" and change.account is not None:
            self._stream_update("account_update", change.account)
        elif change.kind == "position" and change.position is not None:
            self._stream_update("position_update", change.position)
        elif change.kind == "snapshot":
            if change.account is not None:
                log_event(self._log, "account_update", source="resync", **message_fields(change.account))
            for position in change.positions:
                log_event(self._log, "position_update", source="resync", **message_fields(position))
            if not self.ready_logged and self._state.ready:
                self.ready_logged = True
                log_event(self._log, "ready", positions=str(len(change.positions)))
        elif change.kind == "status" and not self._state.connected and self.ready_logged:
            log_event(self._log, "connector_lost", level=logging.WARNING, reason=self._state.reason)

    def _stream_update(self, event: str, message: Message) -> None:
        if self._every:
            log_event(self._log, event, source="stream", **message_fields(message))
            return
        count = self._unlogged.get(event, 0) + 1
        now = self._clock()
        last = self._last_line.get(event)
        if last is not None and now - last < self._interval:
            self._unlogged[event] = count
            return
        self._last_line[event], self._unlogged[event] = now, 0
        log_event(self._log, event, source="stream", updates=str(count), **message_fields(message))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (it cuts the cost of every gRPC message), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
