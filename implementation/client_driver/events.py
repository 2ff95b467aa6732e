"""The driver's output: one JSON object per line on stdout, each stamped with the driver's clock."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

_STARTED = time.monotonic()


def now_ms() -> float:
    """Milliseconds on the driver's monotonic clock (since the driver started)."""
    return round((time.monotonic() - _STARTED) * 1000.0, 3)


def payload(message: Message) -> dict[str, Any]:
    """A contract message as canonical proto3 JSON with the .proto's own field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Emitter:
    """Writes events; every line is flushed at once, so the suite sees it when it happens."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def emit(self, event: str, command_id: str | None = None, **fields: Any) -> None:
        record: dict[str, Any] = {"event": event}
        if command_id is not None:
            record["id"] = command_id
        record["t_ms"] = now_ms()
        record.update(fields)
        self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._out.flush()


__all__ = ["Emitter", "now_ms", "payload"]
