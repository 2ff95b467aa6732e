"""The exchange_connector command line: flags, their EXCHANGE_CONNECTOR_* environment variables,
and the checks that turn a bad setting into one line on stderr and exit code 2.

Every `serve` flag can also come from EXCHANGE_CONNECTOR_<FLAG> (e.g. --tls-client-ca from
EXCHANGE_CONNECTOR_TLS_CLIENT_CA); a flag on the command line wins, an empty variable counts as
unset. `health` flags come from EXCHANGE_CONNECTOR_HEALTH_<FLAG>; its --address defaults to the
listen address (EXCHANGE_CONNECTOR_LISTEN, a wildcard host read as loopback).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from implementation.adapters.sim import DEFAULT_SYMBOLS
from implementation.config import SHARED_TOKEN_ENV, read_token_file
from implementation.connector_core.server import split_address
from implementation.contract.errors import InvalidRequest
from implementation.contract.tls import TlsConfigError, TlsServerConfig, read_pem
from implementation.contract.validation import check_symbol
from implementation.logs import FORMATS, LEVELS

PROGRAM = "exchange_connector"
ENV_PREFIX = "EXCHANGE_CONNECTOR_"
HEALTH_ENV_PREFIX = "EXCHANGE_CONNECTOR_HEALTH_"
EXCHANGES = ("sim", "grpc", "mock")
DEFAULT_LISTEN = "127.0.0.1:50051"


class UsageError(Exception):
    """A bad command line or setting; the message is one line (exit code 2)."""


@dataclass(frozen=True)
class ServeSettings:
    listen: str
    exchange: str
    upstream: str | None
    upstream_ca: Path | None
    upstream_cert: Path | None
    upstream_key: Path | None
    upstream_token: str | None
    upstream_connect_timeout: float
    sim_seed: int
    sim_interval: float
    sim_symbols: tuple[str, ...]
    tls: TlsServerConfig | None
    token: str | None
    metrics_listen: str | None
    log_level: str
    log_format: str
    grace_period: float
    queue_size: int
    max_data_age: float = 5.0
    probe_after: float = 1.0
    subscriber_max_lag: float = 1.0
    upstream_keepalive: float = 10.0
    max_calls: int = 10_000


@dataclass(frozen=True)
class HealthSettings:
    address: str
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    timeout: float
    service: str


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _address(value: str) -> str:
    try:
        split_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _number(kind: type[float] | type[int], low: float, *, strict: bool = False) -> argparse._ActionType:
    def parse(value: str) -> float | int:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        if number < low or (strict and number == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {value}")
        return number

    return parse


def _symbols(value: str) -> tuple[str, ...]:
    symbols = tuple(part.strip() for part in value.split(",") if part.strip())
    if not symbols:
        raise argparse.ArgumentTypeError("expected a comma-separated list of symbols, e.g. BTCUSDT,ETHUSDT")
    try:
        for symbol in symbols:
            check_symbol(symbol)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(set(symbols)) != len(symbols):
        raise argparse.ArgumentTypeError(f"symbols must be distinct, got {value!r}")
    return symbols


def _token(value: str) -> str:
    if not value.strip() or value != value.strip() or any(c in value for c in "\r\n"):
        raise argparse.ArgumentTypeError("a token is one non-empty word without surrounding spaces")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROGRAM, description="Serve one exchange to many clients over gRPC (ExchangeService)."
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,health}", parser_class=_Parser)
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the connector",
        description="Run the exchange connector.",
        epilog=f"Every flag may also be set as {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}TLS_CLIENT_CA.",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_address,
        default=DEFAULT_LISTEN,
        help=f"gRPC address (default {DEFAULT_LISTEN})",
    )
    serve.add_argument("--exchange", choices=EXCHANGES, default="sim", help="exchange adapter (default sim)")
    upstream = serve.add_argument_group("grpc adapter (the upstream is another ExchangeService)")
    upstream.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        type=_address,
        help="upstream HOST:PORT (required with --exchange grpc)",
    )
    upstream.add_argument(
        "--upstream-ca", metavar="FILE", type=Path, help="CA file: talk TLS to the upstream"
    )
    upstream.add_argument(
        "--upstream-cert", metavar="FILE", type=Path, help="client certificate for the upstream (mTLS)"
    )
    upstream.add_argument("--upstream-key", metavar="FILE", type=Path, help="its private key")
    upstream.add_argument(
        "--upstream-token", metavar="TOKEN", type=_token, help="bearer token the upstream requires"
    )
    upstream.add_argument(
        "--upstream-connect-timeout",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=5.0,
        help="seconds (default 5)",
    )
    sim = serve.add_argument_group("sim adapter (a simulated exchange)")
    sim.add_argument(
        "--sim-seed", metavar="N", type=_number(int, 0), default=0, help="random seed (default 0)"
    )
    sim.add_argument(
        "--sim-interval",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=1.0,
        help="seconds between moves (default 1)",
    )
    sim.add_argument(
        "--sim-symbols",
        metavar="LIST",
        type=_symbols,
        default=DEFAULT_SYMBOLS,
        help=f"default {','.join(DEFAULT_SYMBOLS)}",
    )
    security = serve.add_argument_group("security")
    security.add_argument(
        "--tls-cert", metavar="FILE", type=Path, help="server certificate (PEM); enables TLS"
    )
    security.add_argument("--tls-key", metavar="FILE", type=Path, help="server private key (PEM)")
    security.add_argument(
        "--tls-client-ca", metavar="FILE", type=Path, help="require client certificates signed by this CA"
    )
    security.add_argument(
        "--token",
        metavar="TOKEN",
        type=_token,
        help="require `authorization: Bearer <token>` (health exempt; visible in ps: prefer --token-file)",
    )
    security.add_argument(
        "--token-file", metavar="FILE", type=Path, help=f"--token read from FILE (or set {SHARED_TOKEN_ENV})"
    )
    operation = serve.add_argument_group("operation")
    operation.add_argument(
        "--metrics-listen", metavar="HOST:PORT", type=_address, help="serve Prometheus /metrics on HOST:PORT"
    )
    operation.add_argument("--log-level", choices=LEVELS, default="info", help="default info")
    operation.add_argument(
        "--log-format", choices=FORMATS, default="json", help="default json (one object a line)"
    )
    operation.add_argument(
        "--grace-period",
        metavar="SECONDS",
        type=_number(float, 0),
        default=5.0,
        help="seconds to drain on shutdown (default 5)",
    )
    operation.add_argument(
        "--queue-size",
        metavar="N",
        type=_number(int, 1),
        default=1024,
        help="updates a subscriber may lag (default 1024)",
    )
    operation.add_argument(
        "--max-calls",
        metavar="N",
        type=_number(int, 1),
        default=10_000,
        help="calls in flight, streams included, before new ones get RESOURCE_EXHAUSTED (default 10000)",
    )
    freshness = serve.add_argument_group("freshness (docs/sut-manifest.md, rules C30-C35)")
    freshness.add_argument(
        "--max-data-age",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=5.0,
        help="a view older than this is stale: NOT_SERVING, GetAccount UNAVAILABLE (default 5)",
    )
    freshness.add_argument(
        "--probe-after",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=1.0,
        help="silence after which the upstream is asked whether it is alive (default 1)",
    )
    freshness.add_argument(
        "--subscriber-max-lag",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=1.0,
        help="a subscriber whose oldest undelivered update waited longer is dropped (default 1)",
    )
    freshness.add_argument(
        "--upstream-keepalive",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=10.0,
        help="HTTP/2 ping on a silent upstream connection after this long (default 10)",
    )

    health = commands.add_parser(
        "health", help="exit 0 only when the connector is SERVING", description="Check a connector's health."
    )
    health.add_argument(
        "--address",
        metavar="HOST:PORT",
        type=_address,
        help="connector HOST:PORT (default: the listen address)",
    )
    health.add_argument("--tls-ca", metavar="FILE", type=Path, help="CA file: the connector speaks TLS")
    health.add_argument(
        "--tls-cert", metavar="FILE", type=Path, help="client certificate (connector with mTLS)"
    )
    health.add_argument("--tls-key", metavar="FILE", type=Path, help="its private key")
    health.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_number(float, 0, strict=True),
        default=2.0,
        help="seconds (default 2)",
    )
    health.add_argument(
        "--service", metavar="NAME", default="", help="service name to check (default: the whole server)"
    )
    return parser


def _apply_environment(parser: argparse.ArgumentParser, prefix: str, environ: Mapping[str, str]) -> None:
    """Defaults from the environment, checked like the flags themselves."""
    defaults = {}
    for action in parser._actions:
        flag = next((s for s in action.option_strings if s.startswith("--")), None)
        if flag is None or flag == "--help":
            continue
        name = prefix + flag[2:].upper().replace("-", "_")
        raw = environ.get(name, "")
        if not raw:
            continue
        try:
            value = action.type(raw) if callable(action.type) else raw
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UsageError(f"{name}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            raise UsageError(f"{name}: {raw!r} is not one of {', '.join(map(str, action.choices))}")
        defaults[action.dest] = value
    parser.set_defaults(**defaults)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServeSettings | HealthSettings:
    """The settings of the command line; UsageError (one line) for anything wrong."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    _apply_environment(_subparser(parser, "serve"), ENV_PREFIX, env)
    _apply_environment(_subparser(parser, "health"), HEALTH_ENV_PREFIX, env)
    args = parser.parse_args(list(argv))
    if args.command == "health":
        return _health_settings(args, env)
    return _serve_settings(args, env)


def _readable(path: Path | None, flag: str) -> Path | None:
    if path is not None:
        try:
            read_pem(path, flag)
        except TlsConfigError as exc:
            raise UsageError(str(exc)) from None
    return path


def _bearer_token(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """--token, else --token-file's content, else OPENSQT_TOKEN (shared by all three programs)."""
    if args.token is not None and args.token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    if args.token_file is not None:
        try:
            return _token(read_token_file(args.token_file))
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"--token-file: {exc}") from None
    if args.token is None and env.get(SHARED_TOKEN_ENV):
        try:
            return _token(env[SHARED_TOKEN_ENV])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{SHARED_TOKEN_ENV}: {exc}") from None
    return args.token  # type: ignore[no-any-return]


def _serve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> ServeSettings:
    if args.exchange == "grpc" and not args.upstream:
        raise UsageError("--exchange grpc needs --upstream HOST:PORT (or EXCHANGE_CONNECTOR_UPSTREAM)")
    if args.exchange != "grpc":
        for flag in ("upstream", "upstream_ca", "upstream_cert", "upstream_key", "upstream_token"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} is only used with --exchange grpc")
    if args.probe_after >= args.max_data_age:
        raise UsageError(
            f"--probe-after ({args.probe_after:g} s) must be below --max-data-age ({args.max_data_age:g} s)"
        )
    if (args.upstream_cert is None) != (args.upstream_key is None):
        raise UsageError("--upstream-cert and --upstream-key go together")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give both to serve TLS")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    tls = None
    if args.tls_cert is not None:
        tls = TlsServerConfig(
            _readable(args.tls_cert, "--tls-cert") or args.tls_cert,
            _readable(args.tls_key, "--tls-key") or args.tls_key,
            _readable(args.tls_client_ca, "--tls-client-ca"),
        )
        try:
            tls.check()
        except TlsConfigError as exc:
            raise UsageError(str(exc)) from None
    return ServeSettings(
        listen=args.listen,
        exchange=args.exchange,
        upstream=args.upstream,
        upstream_ca=_readable(args.upstream_ca, "--upstream-ca"),
        upstream_cert=_readable(args.upstream_cert, "--upstream-cert"),
        upstream_key=_readable(args.upstream_key, "--upstream-key"),
        upstream_token=args.upstream_token,
        upstream_connect_timeout=args.upstream_connect_timeout,
        sim_seed=args.sim_seed,
        sim_interval=args.sim_interval,
        sim_symbols=tuple(args.sim_symbols),
        tls=tls,
        token=_bearer_token(args, env),
        metrics_listen=args.metrics_listen,
        log_level=args.log_level,
        log_format=args.log_format,
        grace_period=args.grace_period,
        queue_size=args.queue_size,
        max_data_age=args.max_data_age,
        probe_after=args.probe_after,
        subscriber_max_lag=args.subscriber_max_lag,
        upstream_keepalive=args.upstream_keepalive,
        max_calls=args.max_calls,
    )


def _health_settings(args: argparse.Namespace, env: Mapping[str, str]) -> HealthSettings:
    address = args.address
    if address is None:
        listen = env.get(ENV_PREFIX + "LISTEN") or DEFAULT_LISTEN
        try:
            host, port = split_address(listen)
        except ValueError as exc:
            raise UsageError(f"{ENV_PREFIX}LISTEN: {exc}") from None
        address = f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "") else listen
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    return HealthSettings(
        address=address,
        tls_ca=_readable(args.tls_ca, "--tls-ca"),
        tls_cert=_readable(args.tls_cert, "--tls-cert"),
        tls_key=_readable(args.tls_key, "--tls-key"),
        timeout=args.timeout,
        service=args.service,
    )


__all__ = ["ENV_PREFIX", "PROGRAM", "HealthSettings", "ServeSettings", "UsageError", "build_parser", "parse"]
