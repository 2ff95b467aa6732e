"""The ExchangeService's method handlers, with requests parsed so that garbage is a client error.

grpc's generated registration parses each request with `FromString`; a malformed protobuf or a
string field that is not UTF-8 then raises inside grpc, which logs a traceback and answers
UNKNOWN naming a Python class. Here the parser never raises: it hands the handler a Malformed
request, which is answered INVALID_ARGUMENT, counted, and logged at most once per interval
(before authentication too: the bearer-token check sees the same Malformed request).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from implementation.connector_core.log_limit import LimitedLog
from opensqt.exchange.v1 import exchange_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Awaitable[Any]]
_log = logging.getLogger("implementation.connector_core.server")


@dataclass(frozen=True)
class Malformed:
    """A request that could not be parsed, and why."""

    method: str
    reason: str


@dataclass
class CallStats:
    """Counters of calls the connector refused, read by the metrics endpoint."""

    malformed: Counter[str] = field(default_factory=Counter)  # by method
    auth_rejected: Counter[str] = field(default_factory=Counter)  # by reason: missing, invalid
    malformed_log: LimitedLog = field(default_factory=lambda: LimitedLog(_log, "malformed_request"))


def _parser(method: str, kind: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return kind.FromString(data)
        except DecodeError as exc:
            return Malformed(method, str(exc))

    return parse


async def refuse_malformed(request: Malformed, context: Context, stats: CallStats) -> None:
    """INVALID_ARGUMENT for a request that could not be parsed; counted, the log line rate-limited."""
    stats.malformed[request.method] += 1
    stats.malformed_log.log(method=request.method, peer=context.peer(), reason=request.reason)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"malformed {request.method} request: {request.reason}"
    )


def _guard(method: str, handle: Handler, stats: CallStats) -> Handler:
    async def guarded(request: Any, context: Context) -> Any:
        if isinstance(request, Malformed):
            await refuse_malformed(request, context, stats)
        return await handle(request, context)

    guarded.__name__ = method
    return guarded


def add_service(servicer: Any, server: grpc.aio.Server, stats: CallStats) -> None:
    """Register the four methods of `servicer` on `server`, as the generated code would, but with
    parsers that turn a malformed request into INVALID_ARGUMENT."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    shapes = (
        ("GetAccount", unary, pb.GetAccountRequest, pb.Account),
        ("GetPositions", unary, pb.GetPositionsRequest, pb.GetPositionsResponse),
        ("SubscribeAccount", stream, pb.SubscribeAccountRequest, pb.Account),
        ("SubscribePositions", stream, pb.SubscribePositionsRequest, pb.Position),
    )
    handlers = {
        name: shape(
            _guard(name, getattr(servicer, name), stats),
            request_deserializer=_parser(name, request),
            response_serializer=response.SerializeToString,
        )
        for name, shape, request, response in shapes
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


__all__ = ["CallStats", "Malformed", "add_service", "refuse_malformed"]
