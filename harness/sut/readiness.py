"""How the launcher tells that a started program is ready, per the manifest's `ready` key.

- grpc-health: grpc.health.v1 Check on 127.0.0.1:{grpc_port} answers SERVING (over TLS with
  {tls_ca} when the program was started with TLS);
- http:/path: GET http://127.0.0.1:{http_port}/path answers 200;
- log:event: the program logged a JSON line whose "event" is that name.

Each remembers what it saw last, so a timeout can say why in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

# reconnect quickly: the program starts listening a moment after it is spawned
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.use_local_subchannel_pool", 1),
]
REFUSED = "refused"


class Readiness(Protocol):
    def check(self, timeout: float) -> bool:
        """One probe: True once the program is ready."""

    def timeout_reason(self, waited: float) -> str:
        """Why it is not ready, after `waited` seconds, in one line."""

    def close(self) -> None: ...


def _refused(port: int, waited: float) -> str:
    return f"connection refused on 127.0.0.1:{port} after {waited:.1f} s (nothing listening)"


class GrpcHealthReady:
    def __init__(self, port: int, credentials: grpc.ChannelCredentials | None, token: str | None) -> None:
        self.port = port
        target = f"127.0.0.1:{port}"
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._last = "no answer yet"

    def check(self, timeout: float) -> bool:
        try:
            response = self._stub.Check(
                health_pb2.HealthCheckRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = str(error.details() or "") if isinstance(error, grpc.Call) else str(error)
            if code is grpc.StatusCode.UNAVAILABLE and "refused" in details.lower():
                self._last = REFUSED
            else:
                self._last = f"last health check failed: {code.name}: {details[:300]}"
            return False
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        self._last = f"health {status}"
        return bool(status == "SERVING")

    def timeout_reason(self, waited: float) -> str:
        if self._last == REFUSED:
            return _refused(self.port, waited)
        return f"readiness timed out after {waited:.1f} s ({self._last})"

    def close(self) -> None:
        self._channel.close()


class HttpReady:
    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False)
        self._last = "no answer yet"

    def check(self, timeout: float) -> bool:
        try:
            response = self._client.get(self.path, timeout=timeout)
        except httpx.ConnectError as error:
            self._last = REFUSED if "refused" in str(error).lower() else f"GET {self.path} failed: {error}"
            return False
        except httpx.HTTPError as error:
            self._last = f"GET {self.path} failed: {type(error).__name__}: {error}"
            return False
        if response.status_code == 200:
            return True
        body = " ".join(response.text.split())[:300]
        self._last = f"GET {self.path} answered {response.status_code}: {body}"
        return False

    def timeout_reason(self, waited: float) -> str:
        if self._last == REFUSED:
            return _refused(self.port, waited)
        return f"readiness timed out after {waited:.1f} s ({self._last})"

    def close(self) -> None:
        self._client.close()


class LogEventReady:
    def __init__(self, event: str, events: Callable[[str], list[dict[str, Any]]]) -> None:
        self.event = event
        self._events = events

    def check(self, timeout: float) -> bool:
        return bool(self._events(self.event))

    def timeout_reason(self, waited: float) -> str:
        return f"readiness timed out after {waited:.1f} s (no {self.event!r} event in its log)"

    def close(self) -> None:
        pass


def _port(values: Mapping[str, Any], key: str, ready: str) -> int:
    if key not in values:
        raise ValueError(f"readiness {ready!r} needs the {{{key}}} value, which this start did not give")
    return int(values[key])


def _credentials(values: Mapping[str, Any]) -> grpc.ChannelCredentials:
    if "tls_ca" not in values:
        raise ValueError("a program started with tls=True needs the {tls_ca} value to check its health")
    client_cert, client_key = values.get("tls_client_cert"), values.get("tls_client_key")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(values["tls_ca"]).read_bytes(),
        private_key=Path(client_key).read_bytes() if client_key else None,
        certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
    )


def make_readiness(
    ready: str,
    values: Mapping[str, Any],
    *,
    tls: bool,
    token: bool,
    events: Callable[[str], list[dict[str, Any]]],
) -> Readiness:
    """The probe for the manifest's `ready` value ("grpc-health", "http:/health", "log:ready")."""
    kind, _, argument = ready.partition(":")
    if kind == "grpc-health":
        credentials = _credentials(values) if tls else None
        bearer = str(values["token"]) if token and "token" in values else None
        return GrpcHealthReady(_port(values, "grpc_port", ready), credentials, bearer)
    if kind == "http":
        return HttpReady(_port(values, "http_port", ready), argument or "/")
    if kind == "log":
        return LogEventReady(argument, events)
    raise ValueError(f"unknown readiness {ready!r}: expected grpc-health, http:<path> or log:<event>")
