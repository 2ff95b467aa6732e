"""A session with the SUT's client driver (docs/client-driver.md): spawn it, send commands, await events.

The driver runs in its own process group with stdin and stdout as pipes; a reader thread parses
each stdout line as it comes, and stderr goes to a file kept for the failure report. Every wait
has a timeout whose message names the scenario's rule and shows what the driver said. close()
ends the input and checks the driver exits 0 within 5 s (rule D8); kill() is the last resort and
always runs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from harness.sut.attached_driver import AttachedDriver, AttachTimeout, command_line, instructions
from harness.sut.manifest import Manifest

READY_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 5.0
STDERR_TAIL_LINES = 20
Event = dict[str, Any]
# The events that end a command: a call's answer, a subscription's start, or its error.
OUTCOMES = frozenset({"connected", "result", "subscribed", "cancelled", "closed", "error"})


class DriverFailure(AssertionError):
    """The driver broke the protocol or did not answer in time; the message says which rule and what it said."""


class DriverSession:
    """One running client driver. Use start_driver() (or the `client_driver` fixture) to make one;
    with `attached`, the pipes of a driver the user started (harness.sut.attached_driver)."""

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        env: Mapping[str, str],
        scenario: str = "",
        *,
        attached: AttachedDriver | None = None,
    ) -> None:
        self.args, self.workdir, self.scenario = args, workdir, scenario
        workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = workdir / "client_driver.stderr"
        self._stderr = self.stderr_path.open("wb")
        self._attached = attached
        self._process: subprocess.Popen[bytes] | AttachedDriver
        if attached is not None:
            self._process = attached
        else:
            try:
                self._process = subprocess.Popen(
                    args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                    cwd=workdir, env={**os.environ, **env}, start_new_session=True,
                )  # fmt: skip
            except OSError as error:
                self._stderr.close()
                raise DriverFailure(
                    f"{self._tag('D1')}cannot run the client driver {args[0]!r}: {error.strerror}"
                ) from None
        self.events: list[Event] = []
        self.protocol_errors: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, name="client-driver-stdout", daemon=True)
        self._reader.start()
        self.ready: Event = {}

    # ------------------------------------------------------------------------------ reading

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            with self._changed:
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                    self.protocol_errors.append(f"not an event object: {line[:200]!r}")
                elif not isinstance(event.get("t_ms"), (int, float)):
                    self.protocol_errors.append(f"event without a numeric t_ms: {line[:200]!r}")
                else:
                    self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _tag(self, rule: str) -> str:
        return f"[{self.scenario}] (rule {rule}): " if self.scenario else f"(rule {rule}): "

    def stderr_tail(self, count: int = STDERR_TAIL_LINES) -> str:
        if self._attached is not None:
            return "driver stderr: on the attached driver's own console"
        self._stderr.flush()
        lines = (
            self.stderr_path.read_text("utf-8", "replace").splitlines() if self.stderr_path.exists() else []
        )
        shown = "\n    ".join(lines[-count:]) or "(empty)"
        return f"driver stderr (last {min(count, len(lines))} lines):\n    {shown}"

    def describe(self, last: int = 8) -> str:
        with self._changed:
            events = [json.dumps(event)[:300] for event in self.events[-last:]]
            problems = list(self.protocol_errors)
        code = self._process.poll()
        if self._attached is not None:
            state = "(attached) closed its stdout" if self._eof else "(attached) running"
        else:
            state = "running" if code is None else f"exited with code {code}"
        shown = "\n    ".join(events) or "(none)"
        bad = f"; lines that break the protocol: {problems[:3]}" if problems else ""
        return f"driver {state}{bad}; its last events:\n    {shown}\n{self.stderr_tail()}"

    # ------------------------------------------------------------------------------ waiting

    def wait_for(self, accept: Callable[[Event], bool], timeout: float, expectation: str, rule: str) -> Event:
        """The first event (of all so far, then new ones) `accept` holds for; DriverFailure after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if accept(event):
                        return event
                if self._eof or self._process.poll() is not None:
                    reason = "the driver exited first"
                else:
                    remaining = deadline - time.monotonic()
                    if remaining > 0:
                        self._changed.wait(min(remaining, 0.1))
                        continue
                    reason = f"nothing within {timeout:g} s"
                raise DriverFailure(
                    f"{self._tag(rule)}expected {expectation}, got {reason}; {self.describe()}"
                )

    def outcome(self, command_id: str, timeout: float, rule: str, kinds: Iterable[str] = OUTCOMES) -> Event:
        """The event that ends command `command_id` (connected, result, subscribed, cancelled, closed or error)."""
        wanted = frozenset(kinds)
        return self.wait_for(
            lambda e: e.get("id") == command_id and e["event"] in wanted,
            timeout,
            f"an answer ({' or '.join(sorted(wanted))}) to command {command_id}",
            rule,
        )

    def of(self, command_id: str, kind: str) -> list[Event]:
        """Every `kind` event of command `command_id` so far."""
        with self._changed:
            return [e for e in self.events if e.get("id") == command_id and e["event"] == kind]

    def wait_count(self, command_id: str, kind: str, count: int, timeout: float, rule: str) -> list[Event]:
        """Until `count` `kind` events of `command_id` arrived; all of them."""
        self.wait_for(
            lambda e: len(self.of(command_id, kind)) >= count, timeout, f"{count} {kind!r} events of {command_id} "
            f"(got {len(self.of(command_id, kind))})", rule,
        )  # fmt: skip
        return self.of(command_id, kind)

    def _await_ready(self, timeout: float) -> None:
        self.ready = self.wait_for(lambda e: True, timeout, "a `ready` event as the first line", "D1")
        if self.ready["event"] != "ready":
            raise DriverFailure(
                f"{self._tag('D1')}expected `ready` as the first event, got {json.dumps(self.ready)[:300]}; "
                f"{self.describe()}"
            )

    # ------------------------------------------------------------------------------ commands

    def send(self, cmd: str, **fields: Any) -> str:
        """Write one command; its id."""
        command_id = f"c{next(self._ids)}"
        line = json.dumps({"id": command_id, "cmd": cmd, **fields}) + "\n"
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise DriverFailure(
                f"{self._tag('D3')}could not send {cmd}: the driver's stdin is closed; {self.describe()}"
            ) from None
        return command_id

    def send_raw(self, line: str) -> None:
        """Write one line as it is (for protocol checks: a line that is not a command)."""
        assert self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")
        self._process.stdin.flush()

    def index(self, event: Event) -> int:
        """Where `event` is in the order the driver printed its events."""
        with self._changed:
            return next(i for i, seen in enumerate(self.events) if seen is event)

    def call(self, cmd: str, timeout: float, rule: str, **fields: Any) -> Event:
        """send() and wait for the command's outcome."""
        return self.outcome(self.send(cmd, **fields), timeout, rule)

    def connect(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        rule: str = "D10",
        connect_timeout_ms: float = 5000,
        call_timeout_ms: float | None = 10000,
        tls: Mapping[str, str] | None = None,
        token: str | None = None,
        reconnect: Mapping[str, float] | None = None,
    ) -> Event:
        """`connect`, and its outcome (connected or error)."""
        return self.call(
            "connect", timeout, rule, address=address, tls=dict(tls) if tls else None, token=token,
            connect_timeout_ms=connect_timeout_ms, call_timeout_ms=call_timeout_ms,
            reconnect=dict(reconnect) if reconnect else {"initial_backoff_ms": 50, "max_backoff_ms": 500},
        )  # fmt: skip

    def expect(self, event: Event, kind: str, rule: str, doing: str) -> Event:
        """`event` if it is a `kind` event; DriverFailure naming `rule` otherwise (rule D5 when the
        driver says its library cannot do it at all)."""
        if event["event"] == "error" and event.get("kind") == "unsupported" and kind != "error":
            said = str(event.get("message") or event.get("details") or "")[:300]
            raise DriverFailure(
                f"{self._tag('D5')}the client library cannot do what the scenario needs ({doing}; rule {rule}): "
                f"the driver answered `unsupported`: {said}; {self.describe()}"
            )
        if event["event"] != kind:
            raise DriverFailure(
                f"{self._tag(rule)}expected {kind!r} {doing}, got {json.dumps(event)[:400]}; {self.describe()}"
            )
        return event

    # ------------------------------------------------------------------------------ ending

    def close(self) -> None:
        """End of input; the driver must exit 0 within EXIT_TIMEOUT_S (rule D8). Killed otherwise.
        An attached driver must close its stdout within that time (its exit code is not the suite's
        to see)."""
        try:
            if self._process.poll() is None and self._process.stdin is not None:
                with suppress(BrokenPipeError, ValueError):
                    self._process.stdin.close()
            if isinstance(self._process, AttachedDriver):
                with self._changed:
                    ended = self._changed.wait_for(lambda: self._eof, EXIT_TIMEOUT_S)
                if not ended:
                    raise DriverFailure(
                        f"{self._tag('D8')}expected the attached driver to close its stdout within "
                        f"{EXIT_TIMEOUT_S:g} s of the end of its input, it did not; {self.describe()}"
                    )
                code = 0
            else:
                try:
                    code = self._process.wait(EXIT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise DriverFailure(
                        f"{self._tag('D8')}expected the driver to exit 0 within {EXIT_TIMEOUT_S:g} s of the end of "
                        f"its input, it was still running (killed it); {self.describe()}"
                    ) from None
            if code != 0:
                raise DriverFailure(
                    f"{self._tag('D8')}expected exit code 0 after the end of input, got {code}; {self.describe()}"
                )
            if self.protocol_errors:
                raise DriverFailure(
                    f"{self._tag('D2')}expected only JSON event lines with `event` and `t_ms` on stdout, got "
                    f"{self.protocol_errors[:3]}; {self.describe()}"
                )
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the driver and its process group (harmless when it has exited); an attached
        driver, which is the user's, only loses its pipes."""
        if isinstance(self._process, AttachedDriver):
            self._process.end_input()
            self._reader.join(EXIT_TIMEOUT_S)
            if not self._reader.is_alive():  # a reader still waiting on it would hold its lock
                self._process.close()
            self._stderr.close()
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        with suppress(Exception):
            self._process.wait(5.0)
        self._reader.join(2.0)
        for stream in (self._process.stdin, self._process.stdout):
            with suppress(Exception):
                if stream is not None:
                    stream.close()
        self._stderr.close()

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    @property
    def running(self) -> bool:
        """Still running: a spawned driver has not exited; an attached one has not closed its stdout."""
        if self._attached is not None:
            with self._changed:
                return not self._eof
        return self._process.poll() is None


def driver_command(manifest: Manifest, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The manifest's client_driver command line and environment, filled in."""
    program = manifest.program("client_driver")
    values = {"python": sys.executable, "workdir": str(workdir), "root": str(manifest.path.parent)}
    args = program.render_command(values)
    if "/" in args[0] and not Path(args[0]).is_absolute():  # relative to the manifest, not to cwd
        args[0] = str(manifest.path.parent / args[0])
    return args, {key: program.render(value, values) for key, value in program.env.items()}


def start_driver(manifest: Manifest, workdir: Path, scenario: str = "") -> DriverSession:
    """Start the manifest's client driver and wait for its `ready` line (rule D1)."""
    args, env = driver_command(manifest, workdir)
    session = DriverSession(args, workdir, {"PYTHONUNBUFFERED": "1", **env}, scenario)
    try:
        session._await_ready(READY_TIMEOUT_S)
    except BaseException:
        session.kill()
        raise
    return session


def attach_driver(
    manifest: Manifest, workdir: Path, scenario: str, number: int, timeout: float, say: Callable[[str], None]
) -> DriverSession:
    """Print how to start the manifest's client driver on two named pipes, wait (up to `timeout` s)
    for the user to start it and for its `ready` line (harness.sut.attached_driver)."""
    args, env = driver_command(manifest, workdir)
    driver = AttachedDriver(workdir / "pipes")
    for line in instructions(
        manifest, workdir, driver, command_line(args, env, workdir, driver), scenario, number
    ):
        say(line)
    try:
        driver.open(timeout)
    except AttachTimeout as error:
        raise DriverFailure(f"[{scenario}] (rule D1): {error}") from None
    session = DriverSession(args, workdir, env, scenario, attached=driver)
    try:
        session._await_ready(timeout)
    except BaseException:
        session.kill()
        raise
    say(f"attach: driver {number} is ready; running {scenario or 'the test'}")
    return session


def to_message(payload: Any, message_type: type[Message], where: str) -> Message:
    """A payload (canonical proto3 JSON, rule D6) as a contract message; DriverFailure if it is not one."""
    if not isinstance(payload, dict):
        raise DriverFailure(
            f"{where} (rule D6): expected a {message_type.__name__} as a JSON object, got {payload!r}"
        )
    try:
        return json_format.ParseDict(payload, message_type())
    except json_format.ParseError as error:
        raise DriverFailure(
            f"{where} (rule D6): expected canonical proto3 JSON of {message_type.__name__}, got {payload!r}: {error}"
        ) from None


__all__ = [
    "DriverFailure",
    "DriverSession",
    "Event",
    "attach_driver",
    "driver_command",
    "start_driver",
    "to_message",
]
