"""exchange_connector: serve one exchange to many clients over gRPC.

    python -m implementation.connector serve [--listen HOST:PORT] [--exchange sim|grpc|mock] ...
    python -m implementation.connector health [--address HOST:PORT] [--tls-ca F] [--timeout 2]

Exit codes: 0 after SIGTERM/SIGINT (graceful shutdown) or a SERVING health check; 1 when the
program cannot run (port in use) or the health check fails; 2 for a bad flag, environment
variable or unreadable file, with one line on stderr saying which.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from implementation.adapters.grpc_upstream import UPSTREAM_KEEPALIVE_TIMEOUT_S, GrpcExchange
from implementation.adapters.interface import Exchange
from implementation.adapters.mock import MockExchange
from implementation.adapters.sim import SimExchange
from implementation.adapters.threaded import ThreadedExchange
from implementation.connector.cli import PROGRAM, HealthSettings, ServeSettings, UsageError, parse
from implementation.connector.health import check_health
from implementation.connector.metrics import MetricsServer
from implementation.connector_core.freshness import FreshnessPolicy
from implementation.connector_core.server import ExchangeServer, ListenError
from implementation.contract.tls import TlsConfigError
from implementation.logs import configure_logging, log_event
from implementation.stop_signals import ignore_stop_signals, stop_event

_log = logging.getLogger(PROGRAM)


def build_exchange(settings: ServeSettings) -> Exchange:
    """The exchange adapter the settings name."""
    if settings.exchange == "grpc":
        upstream = settings.upstream
        assert upstream is not None, "checked by the command line"

        def grpc_exchange() -> GrpcExchange:
            return GrpcExchange(
                upstream,
                connect_timeout=settings.upstream_connect_timeout,
                tls_ca=settings.upstream_ca,
                tls_cert=settings.upstream_cert,
                tls_key=settings.upstream_key,
                token=settings.upstream_token,
                call_timeout=settings.max_data_age,  # a call the upstream holds longer is a hung upstream
                keepalive=settings.upstream_keepalive,
                keepalive_timeout=min(UPSTREAM_KEEPALIVE_TIMEOUT_S, settings.max_data_age),
            )

        # the upstream read on a loop of its own, never in lockstep with the subscribers' writes
        return ThreadedExchange(grpc_exchange)
    if settings.exchange == "mock":
        return MockExchange()
    return SimExchange(seed=settings.sim_seed, interval=settings.sim_interval, symbols=settings.sim_symbols)


async def serve(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the exit code."""
    loop = asyncio.get_running_loop()
    stop = stop_event()  # kept through the shutdown: a second signal does not cut it short
    server = ExchangeServer(
        build_exchange(settings),
        token=settings.token,
        tls=settings.tls,
        grace_period=settings.grace_period,
        queue_size=settings.queue_size,
        max_calls=settings.max_calls,
        freshness=FreshnessPolicy(
            max_age=settings.max_data_age,
            probe_after=settings.probe_after,
            subscriber_max_lag=settings.subscriber_max_lag,
        ),
    )
    metrics = None
    if settings.metrics_listen:
        metrics = MetricsServer(
            server.hub, stats=server.stats, positions=server.positions_calls, refused=server.refused
        )
    log_event(
        _log, "starting", exchange=settings.exchange, upstream=settings.upstream, listen=settings.listen,
        loop=type(loop).__module__,
    )  # fmt: skip
    code = 0
    try:
        await server.start(settings.listen)
        # Everything built so far (modules, server, hub) lives as long as the process: keep it out
        # of the collector's scans, so a full collection stays short on the streaming path.
        gc.freeze()
        if metrics is not None and settings.metrics_listen:
            try:
                port = await metrics.start(settings.metrics_listen)
            except OSError as exc:
                raise ListenError(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror or exc}"
                ) from None
            log_event(_log, "metrics_listening", address=settings.metrics_listen, port=port)
        await stop.wait()
    except (ListenError, TlsConfigError) as exc:
        log_event(_log, "failed", level=logging.ERROR, reason=str(exc))
        code = 2 if isinstance(exc, TlsConfigError) else 1
    finally:
        await server.stop(None if code == 0 else 0)
        if metrics is not None:
            await metrics.stop()
        ignore_stop_signals()  # on the way out: the interpreter's teardown must not be cut short
    return code


def run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (less CPU per message), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run
        return asyncio.run(coroutine)
    return int(uvloop.run(coroutine))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(settings, HealthSettings):
        return check_health(settings)
    configure_logging(settings.log_level, settings.log_format)
    return run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
