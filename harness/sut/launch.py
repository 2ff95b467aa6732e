"""Start the programs of a SUT manifest as subprocesses, wait until ready, stop them, always clean up.

Each program runs in its own session (so a kill reaches every process it started), with stdout and
stderr in log files under the launcher's folder; its log is JSON lines on stderr. A start that
fails says why in one line (port in use, exited with code N, connection refused, timed out) followed
by the program's last log lines, and leaves nothing running.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from harness.ports import is_free
from harness.sut.manifest import Manifest
from harness.sut.program_log import TAIL_LINES, Event, ProgramLog
from harness.sut.readiness import Readiness, make_readiness

PORT_VALUES = ("grpc_port", "http_port", "metrics_port")
DEFAULT_READY_TIMEOUT_S = 15.0


class ProgramNotReady(RuntimeError):
    """A program did not become ready; the message is the reason, then its last log lines."""

    def __init__(self, program: str, reason: str, tail: str = "", exit_code: int | None = None) -> None:
        self.program, self.reason, self.exit_code = program, reason, exit_code
        super().__init__(f"{reason}; {tail}" if tail else reason)


class CapabilityNotClaimed(RuntimeError):
    """A test asked a program for a capability its SUT does not claim: the test lacks requires(...)."""


class ProgramStopFailed(AssertionError):
    """A program did not exit within its stop timeout after SIGTERM and was killed."""


class EventNotSeen(AssertionError):
    """A program did not log the awaited event in time (or exited first)."""


def describe_exit(code: int) -> str:
    if code < 0:
        with suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class RunningProgram:
    """A started program: its process, its log, its events; stop() or kill() it when done."""

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        args: list[str],
        workdir: Path,
        values: Mapping[str, Any],
        event_names: Mapping[str, str],
        stop_timeout_s: float,
    ) -> None:
        self.name, self.args, self.workdir, self.values = name, args, workdir, dict(values)
        self.stop_timeout_s = stop_timeout_s
        self.log = ProgramLog(workdir)
        self.log_path = self.log.stderr_path
        self.stdout_path = self.log.stdout_path
        self._process = process
        self._event_names = event_names
        self.exit_observed = False  # the test stopped, killed or waited for it: its exit is accounted for

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def address(self) -> str:
        """127.0.0.1:{grpc_port}, where a gRPC program listens."""
        return f"127.0.0.1:{self.values['grpc_port']}"

    @property
    def http_url(self) -> str:
        """http://127.0.0.1:{http_port}, where an HTTP program listens."""
        return f"http://127.0.0.1:{self.values['http_port']}"

    def log_lines(self) -> list[str]:
        """Every line the program wrote to stderr (its log) so far."""
        return self.log.lines()

    def output_lines(self) -> list[str]:
        """Every line the program wrote to stdout so far."""
        return self.log.output_lines()

    def tail(self, count: int = TAIL_LINES) -> str:
        """The last log lines, formatted for a failure message."""
        return self.log.tail(count)

    def events(self, name: str) -> list[Event]:
        """The parsed JSON log lines (stderr, then stdout) whose "event" is `name`; the manifest's
        [events] table maps the suite's event names to the program's."""
        return self.log.events(self._event_names.get(name, name))

    def wait_for_event(
        self, name: str, predicate: Callable[[Event], bool] | None = None, timeout: float = 10.0
    ) -> Event:
        """The first logged `name` event for which `predicate` holds; EventNotSeen after `timeout` s."""
        wanted = self._event_names.get(name, name)
        deadline = time.monotonic() + timeout
        checked, predicate_error = 0, ""
        while True:
            exit_code = self._process.poll()  # read before the log: a last line is then never missed
            matches = self.events(name)
            for record in matches[checked:]:
                try:
                    if predicate is None or predicate(record):
                        return record
                except (KeyError, TypeError, ValueError, AttributeError) as error:
                    predicate_error = predicate_error or f"; the condition failed on {record}: {error!r}"
            checked = len(matches)
            condition = "" if predicate is None else " matching the condition"
            if exit_code is not None:
                raise EventNotSeen(
                    f"{self.name} {describe_exit(exit_code)} before logging a {wanted!r} event{condition} "
                    f"({len(matches)} seen){predicate_error}; {self.tail()}"
                )
            if time.monotonic() >= deadline:
                last = f", last: {json.dumps(matches[-1])[:400]}" if matches else ""
                raise EventNotSeen(
                    f"{self.name}: no {wanted!r} event{condition} within {timeout} s "
                    f"({len(matches)} {wanted!r} event(s) logged{last}){predicate_error}; {self.tail()}"
                )
            time.sleep(0.02)

    async def wait_for_event_async(
        self, name: str, predicate: Callable[[Event], bool] | None = None, timeout: float = 10.0
    ) -> Event:
        """wait_for_event for async tests: the caller's event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.wait_for_event, name, predicate, timeout)

    def wait(self, timeout: float) -> int:
        """Wait for the program to exit on its own; its exit code. TimeoutError names the program."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} (pid {self.pid}) still running after {timeout} s") from None
        self.exit_observed = True
        return code

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then wait up to `timeout` s (default: the manifest's stop_timeout_s) for the exit code.

        A program still running then is killed with its whole process group, and ProgramStopFailed
        says so. Whatever it started that is still running is killed too. Stopping twice is harmless.
        """
        limit = self.stop_timeout_s if timeout is None else timeout
        self.exit_observed = True
        if self._process.poll() is None:
            with suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(limit)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._process.wait()
                _RUNNING.discard(self)
                raise ProgramStopFailed(
                    f"{self.name} (pid {self.pid}) did not exit within {limit} s of SIGTERM; "
                    f"killed it and its process group with SIGKILL; {self.tail()}"
                ) from None
        self._kill_group()
        _RUNNING.discard(self)
        return self._process.returncode

    def kill(self) -> int:
        """SIGKILL the program and everything it started; its exit code (-9 unless it had exited)."""
        self.exit_observed = True
        self._kill_group()
        code = self._process.wait()
        _RUNNING.discard(self)
        return code

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The program and everything it started stopped (SIGSTOP) for the block, then continued.

        What peers send meanwhile waits in its sockets and is read at once on resume: a burst that
        arrives together whatever the host's speed, as after a stall of the program's machine.
        """
        os.killpg(self._process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGCONT)

    def _kill_group(self) -> None:
        # the program leads its own session and group: the group id is its pid
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)

    @property
    def state(self) -> str:
        """E.g. "pid 1234, running" or "pid 1234, exited with code 0"."""
        code = self._process.poll()
        return f"pid {self.pid}, " + ("running" if code is None else describe_exit(code))

    def __repr__(self) -> str:
        return f"<RunningProgram {self.name} {self.state}>"


_RUNNING: set[RunningProgram] = set()  # started and not yet stopped or killed


@atexit.register
def _kill_leftovers() -> None:
    """Last resort when a test run ends abruptly: no program outlives the run."""
    for program in list(_RUNNING):
        with suppress(Exception):
            program.kill()


class ProgramLauncher:
    """Starts the manifest's programs with the test's values and stops them all at the end."""

    def __init__(
        self, manifest: Manifest, workdir: Path, *, ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    ) -> None:
        self.manifest = manifest
        self.workdir = workdir
        self.ready_timeout_s = ready_timeout_s
        self.require_clean_exit = True
        self.programs: list[RunningProgram] = []
        self._starts = 0

    def start(
        self,
        name: str,
        values: Mapping[str, Any] | None = None,
        *,
        tls: bool = False,
        token: bool = False,
        ready_timeout: float | None = None,
        wait_ready: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        check_ports: bool = True,
    ) -> RunningProgram:
        """Start program `name` with the placeholder `values` and wait until it is ready.

        A `config` value names a config file the test wrote itself; otherwise the manifest's config
        template is rendered to {workdir}/config.yaml. The program runs in {workdir}, a fresh folder;
        a relative command path is taken from the manifest's folder. Raises ProgramNotReady with a
        one-line reason (the program is then killed). A port value already in use is refused before
        anything starts, unless `check_ports` is False (a test of what the program does then).
        """
        program = self.manifest.program(name)
        for wanted, capability in ((tls, "tls"), (token, "token_auth")):
            if wanted and not self.manifest.has_capability(capability):
                raise CapabilityNotClaimed(
                    f"{name}: a test asked for {capability} from SUT {self.manifest.name!r}, which does not claim "
                    f"it; the test must carry @pytest.mark.requires({capability!r})"
                )
        self._starts += 1
        folder = self.workdir / f"{name}-{self._starts}"
        folder.mkdir(parents=True, exist_ok=True)
        filled: dict[str, Any] = {
            "python": sys.executable,
            "workdir": str(folder),
            "root": str(self.manifest.path.parent),
            **(values or {}),
        }
        if "token" in filled and "token_file" not in filled:
            # the token in a file of the program's own, so it never shows in `ps` (rule H6)
            token_path = folder / "token"
            token_path.write_text(str(filled["token"]), encoding="utf-8")
            token_path.chmod(0o600)
            filled["token_file"] = str(token_path)
        for key in PORT_VALUES if check_ports else ():
            if key in filled and not is_free(int(filled[key])):
                raise ProgramNotReady(name, f"{name}: {_port_in_use(int(filled[key]), key)}")
        if program.config is not None and "config" not in filled:
            config_path = folder / "config.yaml"
            filled["config"] = str(config_path)
            config_path.write_text(program.render(program.config, filled), encoding="utf-8")
        args = program.render_command(filled, tls=tls, token=token) + list(extra_args)
        if "/" in args[0] and not Path(args[0]).is_absolute():  # relative to the manifest, not to cwd
            args[0] = str(self.manifest.path.parent / args[0])
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child_env.update({key: program.render(value, filled) for key, value in program.env.items()})
        child_env.update(env or {})
        started: list[RunningProgram] = []
        # made before the process, so values missing for the probe fail without starting anything
        readiness = (
            make_readiness(
                program.ready, filled, tls=tls, token=token, events=lambda event: started[0].log.events(event)
            )
            if wait_ready
            else None
        )
        try:
            running = self._spawn(name, args, folder, filled, child_env, program.stop_timeout_s)
            started.append(running)
            if readiness is not None:
                try:
                    _wait_ready(
                        running, readiness, self.ready_timeout_s if ready_timeout is None else ready_timeout
                    )
                except BaseException:
                    running.kill()
                    raise
        finally:
            if readiness is not None:
                readiness.close()
        self.programs.append(running)
        return running

    def _spawn(
        self,
        name: str,
        args: list[str],
        folder: Path,
        values: dict[str, Any],
        env: dict[str, str],
        stop_s: float,
    ) -> RunningProgram:
        with (folder / "stdout.log").open("wb") as stdout, (folder / "stderr.log").open("wb") as stderr:
            try:
                process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                    cwd=folder, env=env, start_new_session=True,
                )  # fmt: skip
            except OSError as error:
                raise ProgramNotReady(name, f"{name}: cannot run {args[0]!r}: {error.strerror}") from None
        running = RunningProgram(name, process, args, folder, values, self.manifest.events, stop_s)
        _RUNNING.add(running)
        return running

    async def start_async(
        self, name: str, values: Mapping[str, Any] | None = None, **options: Any
    ) -> RunningProgram:
        """start() for async tests: the caller's event loop keeps running while the program starts."""
        return await asyncio.to_thread(lambda: self.start(name, values, **options))

    def stop_all(self) -> None:
        """Stop every program, last started first, and check each ended cleanly.

        ProgramStopFailed names every program that had to be killed, that exited with a code other
        than 0 after SIGTERM, or that died during the test with a non-zero code the test never read
        (through stop(), kill() or wait()). Set `require_clean_exit = False` to check only the first.
        """
        failures = []
        for program in reversed(self.programs):
            if program.exit_observed:  # the test has read its exit: only make sure nothing is left
                program.kill()
                continue
            died_during_test = program.returncode is not None
            try:
                code = program.stop()
            except ProgramStopFailed as failure:
                failures.append(str(failure))
                continue
            if not self.require_clean_exit or code == 0:
                continue
            if died_during_test:
                failures.append(
                    f"{program.name} (pid {program.pid}) {describe_exit(code)} during the test, "
                    f"unexpectedly (nothing stopped it); {program.tail()}"
                )
            else:
                how = describe_exit(code)
                if code == -signal.SIGTERM:
                    how = "was ended by SIGTERM's default action (no handler installed?)"
                failures.append(
                    f"{program.name} (pid {program.pid}) {how} after SIGTERM, "
                    f"expected a clean exit with code 0; {program.tail()}"
                )
        if failures:
            raise ProgramStopFailed("\n".join(failures))

    def log_tails(self, count: int = 30) -> str:
        """Every started program's last log lines, for a failure report."""
        return "\n".join(
            f"{program.name} ({program.state}): {program.tail(count)}" for program in self.programs
        )


def _wait_ready(program: RunningProgram, readiness: Readiness, timeout: float) -> None:
    started = time.monotonic()
    while True:
        exited = program.returncode is not None  # read first: a program may log "ready", then exit
        remaining = timeout - (time.monotonic() - started)
        if readiness.check(0.05 if exited else max(0.05, min(1.0, remaining))):
            return
        exit_code = program.returncode
        if exit_code is not None:
            reason = f"{program.name} {describe_exit(exit_code)} before becoming ready"
            raise ProgramNotReady(program.name, reason, program.tail(), exit_code)
        waited = time.monotonic() - started
        if waited >= timeout:
            reason = f"{program.name}: {readiness.timeout_reason(waited)}"
            raise ProgramNotReady(program.name, reason, program.tail())
        time.sleep(0.05)


def _port_in_use(port: int, key: str) -> str:
    holder = ""
    with suppress(Exception):  # best effort: naming the holder needs permission to see it
        import psutil

        for connection in psutil.net_connections("tcp"):
            if connection.laddr and connection.laddr.port == port and connection.pid:
                holder = f", held by pid {connection.pid} ({psutil.Process(connection.pid).name()})"
                break
    return f"port {port} ({{{key}}}) is in use on 127.0.0.1{holder}; the program was not started"
