"""--attach client_driver: each driver session of a scenario goes to a client driver the user
starts, e.g. under a debugger, instead of one the suite spawns.

The suite makes two named pipes per session (`commands`, `events`), prints the manifest's command
line with its stdin from one and its stdout to the other, and waits (up to --attach-timeout) for
the program to open them and print `ready`. Its stderr stays on the user's console. The protocol
is then the same as with a spawned driver (docs/client-driver.md); what the suite cannot see is
the driver's exit code (rule D8 is judged by the driver closing its stdout within 5 s of the end
of its input) and how long after its start `ready` came (rule D1's 15 s).
"""

from __future__ import annotations

import os
import shlex
import threading
from contextlib import suppress
from pathlib import Path
from typing import IO

import pytest

from harness.sut.manifest import Manifest

PROGRAM = "client_driver"


def driver_attach_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("attach", None) == PROGRAM)


class AttachTimeout(AssertionError):
    """No client driver opened the pipes in time; the message says where they were."""


class AttachedDriver:
    """The two pipes of a driver the user started: where a spawned driver's process would be."""

    pid = None

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.commands_path, self.events_path = folder / "commands", folder / "events"
        for path in (self.commands_path, self.events_path):
            os.mkfifo(path, 0o600)
        # read-write, so opening it never waits: the driver's stdin may be opened before or after
        # its stdout, in whatever order its shell or debugger redirects them
        self.stdin: IO[bytes] | None = os.fdopen(os.open(self.commands_path, os.O_RDWR), "wb")
        self.stdout: IO[bytes] | None = None

    def open(self, timeout: float) -> None:
        """Until the driver opens its stdout (the events pipe); AttachTimeout after `timeout` s."""
        opened: list[IO[bytes]] = []
        opener = threading.Thread(
            target=lambda: opened.append(open(self.events_path, "rb")),  # kept open: the session reads it
            name="attached-driver-open",
            daemon=True,
        )
        opener.start()
        opener.join(timeout)
        if not opened:
            with suppress(OSError):  # a writer of our own lets the waiting open return
                os.close(os.open(self.events_path, os.O_WRONLY | os.O_NONBLOCK))
            opener.join(2.0)
            for stream in opened:
                stream.close()
            self.close()
            raise AttachTimeout(
                f"expected a client driver to open {self.events_path} (its stdout) within {timeout:g} s, "
                "none did"
            )
        self.stdout = opened[0]

    def poll(self) -> int | None:
        return None  # its exit code is the user's to see; the session watches its stdout end

    def end_input(self) -> None:
        """The end of its input: our end of its stdin closed (we are its only writer)."""
        with suppress(Exception):
            if self.stdin is not None:
                self.stdin.close()

    def close(self) -> None:
        for stream in (self.stdin, self.stdout):
            with suppress(Exception):
                if stream is not None:
                    stream.close()


def command_line(args: list[str], env: dict[str, str], workdir: Path, driver: AttachedDriver) -> str:
    """The driver's command, in its working directory, with its environment and the two pipes as
    its stdin and stdout, for a POSIX shell."""
    run = " ".join([*(f"{key}={shlex.quote(value)}" for key, value in env.items()), shlex.join(args)])
    return (
        f"cd {shlex.quote(str(workdir))} && {run} "
        f"< {shlex.quote(str(driver.commands_path))} > {shlex.quote(str(driver.events_path))}"
    )


def instructions(
    manifest: Manifest, workdir: Path, driver: AttachedDriver, command: str, scenario: str, number: int
) -> list[str]:
    return [
        f"attach: start the client driver yourself (e.g. under a debugger) for {scenario or 'this test'}, "
        f"driver {number}:",
        f"  working directory: {workdir}",
        f"  stdin from the named pipe {driver.commands_path}",
        f"  stdout to the named pipe {driver.events_path}",
        "  stderr: your own console",
        f"  the manifest's command for it ({manifest.path.name}), in a shell:",
        f"attach-command: {command}",
        "attach: waiting for the driver to open its stdout and print `ready` ...",
    ]


__all__ = ["AttachTimeout", "AttachedDriver", "command_line", "driver_attach_mode", "instructions"]
