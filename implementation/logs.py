"""Logging shared by the three programs: one JSON object per line on stderr.

    {"ts": "2026-01-22T10:00:00.123Z", "level": "info", "logger": "exchange_connector",
     "event": "ready", "port": 50051}

A record made with `log_event(logger, "ready", port=50051)` carries its event name and fields.
Any other record (a library's warning, `logger.exception(...)`) becomes event "log" with its
text in "message"; values given as `extra={...}` are included as fields too. Tracebacks travel
in "exc". The text format prints the same content for people: `ts level logger event k=v ...`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error", "critical")
FIELDS_ATTR = "fields"  # where log_event keeps its fields on the LogRecord
EVENT_ATTR = "event"
# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    FIELDS_ATTR,
    EVENT_ATTR,
}


def log_event(logger: logging.Logger, event: str, *, level: int | str = logging.INFO, **fields: Any) -> None:
    """Log `event` with `fields` (JSON-serialisable values; others are shown with str())."""
    number = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    if logger.isEnabledFor(number):
        logger.log(number, event, extra={EVENT_ATTR: event, FIELDS_ATTR: fields})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a record: those given to log_event plus any `extra=` attributes."""
    fields: dict[str, Any] = {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }
    given = getattr(record, FIELDS_ATTR, None)
    if isinstance(given, Mapping):
        fields.update(given)
    return fields


def record_event(record: logging.LogRecord) -> str:
    event = getattr(record, EVENT_ATTR, None)
    return event if isinstance(event, str) and event else "log"


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        event = record_event(record)
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        if event == "log":
            line["message"] = record.getMessage()
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`ts level logger event k=v ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        event = record_event(record)
        parts = [_timestamp(record.created), f"{record.levelname.lower():7}", record.name, event]
        if event == "log":
            parts.append(record.getMessage())
        parts += [f"{key}={value}" for key, value in record_fields(record).items()]
        text = " ".join(str(part) for part in parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    level: str = "info", fmt: str = "json", *, format: str | None = None, stream: TextIO | None = None
) -> None:
    """Send every log record to stderr (or `stream`) as JSON lines (or text); replaces earlier handlers.

    `format` is an alias of `fmt`. Raises ValueError naming the bad level or format."""
    chosen = (format or fmt).lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format {chosen!r} is not one of {', '.join(FORMATS)}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)


__all__ = ["FORMATS", "LEVELS", "JsonLinesFormatter", "TextFormatter", "configure_logging", "log_event"]
