"""Bearer-token authentication for the grpc.aio server (health checks and reflection stay open)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from implementation.connector_core.log_limit import LimitedLog
from implementation.connector_core.service_handlers import CallStats, Malformed, refuse_malformed

# Probes and tooling must work without the token: Docker health checks, grpcurl list/describe.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
MISSING = "missing bearer token"
INVALID = "invalid bearer token"

if TYPE_CHECKING:  # the stubs make RpcMethodHandler generic; grpc itself does not
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


def _presented_token(metadata: Any) -> str | None:
    """The token of the one `authorization: Bearer <token>` header (the scheme in any case, RFC 7235;
    one space; the token as sent); "" for another scheme, other whitespace or several headers (rule
    C16); None when there is no such header."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        return ""
    text = values[0].decode("latin-1") if isinstance(values[0], bytes) else str(values[0])
    scheme, space, token = text.partition(" ")
    return token if space and scheme.lower() == "bearer" else ""


def _refusal(handler: Handler, details: str, stats: CallStats) -> Handler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED `details`
    (INVALID_ARGUMENT for a request that could not even be parsed)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(request, Malformed):
            await refuse_malformed(request, context, stats)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` (UNAUTHENTICATED, saying which problem)."""

    def __init__(self, token: str, stats: CallStats | None = None) -> None:
        if not token or token != token.strip() or any(c in token for c in "\r\n"):
            raise ValueError("the bearer token must be a non-empty single word without surrounding spaces")
        self._expected = token.encode()
        self.stats = stats or CallStats()
        # every refusal is counted; the log says so at most once per interval (guessing is cheap)
        self._log = LimitedLog(logging.getLogger("implementation.connector_core.auth"), "token_rejected")

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is None:
            return self._refuse(handler, handler_call_details, "missing", MISSING)
        if not hmac.compare_digest(presented.encode(), self._expected):
            return self._refuse(handler, handler_call_details, "invalid", INVALID)
        return handler

    def _refuse(
        self, handler: Handler, details: grpc.HandlerCallDetails, reason: str, message: str
    ) -> Handler:
        self.stats.auth_rejected[reason] += 1
        self._log.log(method=details.method, reason=reason, total=self.stats.auth_rejected[reason])
        return _refusal(handler, message, self.stats)


__all__ = ["INVALID", "MISSING", "BearerTokenInterceptor"]
