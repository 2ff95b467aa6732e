"""A started program's log files: stderr (its JSON-lines log) and stdout, read while it runs.

Events are the JSON objects among the lines, one per line, on either stream; they are parsed
incrementally, so waiting for an event in a long log stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

Event = dict[str, Any]
TAIL_LINES = 20
MAX_LINE_CHARS = 500


def tail_lines(path: Path, count: int = TAIL_LINES, max_bytes: int = 256 * 1024) -> list[str]:
    """The last `count` lines of a file, each cut to MAX_LINE_CHARS (none when it does not exist)."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - max_bytes))
            data = file.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "..." for line in lines[-count:]]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return []


class ProgramLog:
    """The stderr and stdout files of one program; thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.stderr_path = folder / "stderr.log"
        self.stdout_path = folder / "stdout.log"
        self._offsets = {self.stderr_path: 0, self.stdout_path: 0}
        self._partial = {self.stderr_path: b"", self.stdout_path: b""}
        self._records: list[Event] = []  # only grows: a reader may remember how far it looked
        self._lock = threading.Lock()

    def lines(self) -> list[str]:
        return _read_lines(self.stderr_path)

    def output_lines(self) -> list[str]:
        return _read_lines(self.stdout_path)

    def tail(self, count: int = TAIL_LINES) -> str:
        """The last lines of both files, formatted for a failure message."""
        errors, output = tail_lines(self.stderr_path, count), tail_lines(self.stdout_path, count)
        if not errors and not output:
            return f"its log is empty ({self.stderr_path})"
        text = f"last log lines ({self.stderr_path}):\n" + "\n".join(f"    {line}" for line in errors)
        if output:
            text += f"\n  last stdout lines ({self.stdout_path}):\n" + "\n".join(
                f"    {line}" for line in output
            )
        return text

    def events(self, wanted: str) -> list[Event]:
        """The JSON lines read so far whose "event" is `wanted`, in the order they were read."""
        return [record for record in self.records() if record.get("event") == wanted]

    def records(self) -> list[Event]:
        """Every JSON object line read so far (stderr's and stdout's, each in order)."""
        with self._lock:
            for path, offset in self._offsets.items():
                try:
                    with path.open("rb") as file:
                        file.seek(offset)
                        chunk = file.read()
                except OSError:
                    continue
                self._offsets[path] = offset + len(chunk)
                lines = (self._partial[path] + chunk).split(b"\n")
                self._partial[path] = lines.pop()  # an unfinished last line waits for its end
                for line in lines:
                    with suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict):
                            self._records.append(record)
            return list(self._records)


# Rule H4: what counts as an error line of a program's log
ERROR_LEVELS = frozenset({"error", "critical", "fatal"})
# a Python traceback, or a line of gRPC core's own log at level E ("E1126 13:16:03.123 ...")
TRACEBACK = "Traceback (most recent call last)"
GRPC_CORE_ERROR = re.compile(r"^E\d{4} \d{2}:\d{2}:\d{2}")


def is_error_line(line: str) -> bool:
    """Rule H4: a JSON line whose `level` (or `severity`) is error, critical or fatal, a traceback,
    or a gRPC core `E...` line."""
    if TRACEBACK in line:
        return True
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict):
        level = record.get("level", record.get("severity", ""))
        return str(level).lower() in ERROR_LEVELS
    return GRPC_CORE_ERROR.match(line) is not None


def error_lines(lines: Iterable[str]) -> list[str]:
    """The error lines (rule H4) among `lines`, in order."""
    return [line for line in lines if is_error_line(line)]
