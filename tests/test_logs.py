"""The JSON-lines log shared by the three programs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from implementation.logs import configure_logging, log_event


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_events_are_json_lines_with_their_fields(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream=stream)
    logger = logging.getLogger("exchange_connector")
    log_event(logger, "ready", port=50051, name="clashes with LogRecord.name", path=None)
    log_event(logger, "dropped", level=logging.WARNING, topic="account")
    log_event(logger, "noise", level="debug")
    logger.info("plain %s", "text", extra={"event": "from_extra", "address": "127.0.0.1:1"})
    logging.getLogger("somelib").warning("library says %d", 3)
    records = lines(stream)
    assert [r["event"] for r in records] == ["ready", "dropped", "from_extra", "log"], records
    ready = records[0]
    assert set(ready) >= {"ts", "level", "logger", "event"} and str(ready["ts"]).endswith("Z"), ready
    assert (ready["level"], ready["logger"], ready["port"], ready["path"]) == (
        "info",
        "exchange_connector",
        50051,
        None,
    )
    assert ready["name"] == "clashes with LogRecord.name"
    assert records[1]["level"] == "warning" and records[2]["address"] == "127.0.0.1:1"
    assert records[3]["message"] == "library says 3"


def test_exceptions_travel_in_exc(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (record,) = lines(stream)
    assert record["level"] == "error" and "RuntimeError: boom" in str(record["exc"]), record


def test_text_format_and_format_alias(stream: io.StringIO) -> None:
    configure_logging("debug", format="text", stream=stream)
    log_event(logging.getLogger("live_server"), "listening", port=8080)
    assert " debug " not in stream.getvalue()
    assert stream.getvalue().rstrip().endswith("info    live_server listening port=8080")


@pytest.mark.parametrize(
    ("level", "fmt", "says"), [("loud", "json", "log level 'loud'"), ("info", "xml", "log format 'xml'")]
)
def test_bad_level_or_format_is_refused(level: str, fmt: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        configure_logging(level, fmt)
