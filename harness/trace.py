"""`--grpc-trace`: what went over gRPC during a test, written out when the test fails.

Two views of one exchange:
- the test's own calls to the system under test: every grpc.aio channel the test process opens
  gets a recording interceptor (method, request metadata, status, details, messages received,
  duration);
- the calls the system under test made to the harness's mock exchange (the mock keeps its call
  log: method, peer, metadata, status, messages written).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

MAX_RECORDS = 2000  # per test: enough to diagnose, bounded for long runs


@dataclass
class CallRecord:
    method: str
    metadata: list[tuple[str, str]]
    started_at: float
    code: str = "pending"
    details: str = ""
    messages: int = 0
    duration_ms: float = 0.0
    target: str = ""


@dataclass
class Tracer:
    records: list[CallRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, method: str, metadata: Any, target: str) -> CallRecord:
        shown = [
            (str(k), "<redacted>" if str(k).lower() == "authorization" else str(v)) for k, v in metadata or ()
        ]
        record = CallRecord(method, shown, time.time(), target=target)
        with self._lock:
            if len(self.records) < MAX_RECORDS:
                self.records.append(record)
        return record

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self.records]


TRACER = Tracer()


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _resolved(coroutine: Any) -> Any:
    """The value of a coroutine that cannot suspend (a done call's status); None if it would."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    except Exception:
        return None
    coroutine.close()
    return None


def _record_status(record: CallRecord, call: Any) -> None:
    """Done callback: the call's final status (read without waiting: the call is done)."""
    record.duration_ms = round((time.time() - record.started_at) * 1000, 3)
    if call.cancelled():
        record.code = "CANCELLED"
        return
    code = _resolved(call.code())
    record.code = code.name if isinstance(code, grpc.StatusCode) else "unknown"
    record.details = _resolved(call.details()) or ""


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, target: str) -> None:
        self.target = target

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        record = TRACER.start(_method(details), details.metadata, self.target)
        call = await continuation(details, request)
        call.add_done_callback(lambda done: _record_status(record, done))
        record.messages = 1
        return call


class _Stream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, target: str) -> None:
        self.target = target

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        record = TRACER.start(_method(details), details.metadata, self.target)
        call = await continuation(details, request)
        call.add_done_callback(lambda done: _record_status(record, done))
        return call


_ORIGINAL: dict[str, Any] = {}


def install() -> None:
    """Every grpc.aio channel opened from now on records its calls."""
    if _ORIGINAL:
        return
    _ORIGINAL["insecure"] = grpc.aio.insecure_channel
    _ORIGINAL["secure"] = grpc.aio.secure_channel

    def insecure(target: str, *args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
        chain = [*(interceptors or ()), _Unary(target), _Stream(target)]
        return _ORIGINAL["insecure"](target, *args, interceptors=chain, **kwargs)

    def secure(target: str, credentials: Any, *args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
        chain = [*(interceptors or ()), _Unary(target), _Stream(target)]
        return _ORIGINAL["secure"](target, credentials, *args, interceptors=chain, **kwargs)

    grpc.aio.insecure_channel = insecure
    grpc.aio.secure_channel = secure


def uninstall() -> None:
    if _ORIGINAL:
        grpc.aio.insecure_channel = _ORIGINAL.pop("insecure")
        grpc.aio.secure_channel = _ORIGINAL.pop("secure")


def write_trace(
    directory: Path, nodeid: str, scenario_ids: list[str], upstream: list[dict[str, Any]] | None
) -> Path:
    """The trace of one failed test, as JSON; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-150:] + ".json")
    body = {
        "test": nodeid,
        "scenarios": scenario_ids,
        "calls_to_sut": TRACER.snapshot(),
        "calls_to_mock_exchange": upstream if upstream is not None else "no mock exchange in this test",
    }
    path.write_text(json.dumps(body, indent=1), encoding="utf-8")
    return path
