"""--attach: the scenarios against a connector the user started, e.g. under a debugger.

The suite starts its mock exchange once for the run and prints what the program needs (the mock's
address to use as its upstream, the gRPC and metrics ports, the TLS files and the token file, and
the manifest's own command line filled in); then it waits until the program's gRPC health reads
SERVING on the given port, and runs the chosen scenarios against it. The connectors factory
(harness.sut.connector) hands every scenario that attached program instead of starting one.

What the attached program cannot do for a scenario makes that scenario NOT APPLICABLE, with the
reason (harness.outcomes.NotApplicable, mode "attach"): being started (in another form: TLS, a
token, another upstream or port, a second one), signalled, paused, stopped or restarted, or read
through its process (pid, resources) or its log, which the suite does not hold.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.doubles.mock_exchange import MockExchangeServer
from harness.outcomes import NotApplicable, not_applicable
from harness.ports import free_port
from harness.sut.launch import ProgramLauncher, RunningProgram
from harness.sut.manifest import Manifest
from harness.tls import TlsMaterial, make_tls_material

PROGRAM = "exchange_connector"
POLL_S = 0.5


def attach_mode(config: pytest.Config) -> bool:
    """The run attaches to a connector the user started (--attach or --attach exchange_connector)."""
    return bool(config.getoption("attach", None) == PROGRAM)


@dataclass
class Attached:
    """The run's attached connector: where it listens and what it was given."""

    manifest: Manifest
    mock: MockExchangeServer
    grpc_port: int
    metrics_port: int
    tls: TlsMaterial
    token_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def values(self) -> dict[str, Any]:
        return {
            "python": sys.executable,
            "root": str(self.manifest.path.parent),
            "workdir": str(self.token_file.parent),
            "upstream": self.mock.address,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "token_file": str(self.token_file),
            "token": self.token_file.read_text(encoding="utf-8"),
            **self.tls.launch_values(),
        }

    def command(self) -> list[str]:
        """The manifest's command line for the connector, filled in (plaintext, no token)."""
        return self.manifest.program(PROGRAM).render_command(self.values())

    def instructions(self) -> list[str]:
        values = self.values()
        program = self.manifest.program(PROGRAM)
        env = {key: program.render(value, values) for key, value in program.env.items()}
        return [
            "attach: start the exchange_connector yourself (e.g. under a debugger) with:",
            f"  upstream (the mock exchange, its ExchangeService): {self.mock.address}",
            f"  gRPC port: {self.grpc_port}    metrics port: {self.metrics_port}",
            f"  TLS files: cert {self.tls.cert_pem}  key {self.tls.key_pem}  CA {self.tls.ca_pem}",
            f"  token file: {self.token_file}",
            "  plaintext, no token: the scenarios that need TLS or a token are not applicable in this mode",
            f"  the manifest's command for it ({self.manifest.path.name}):",
            *(f"    {key}={shlex.quote(value)}" for key, value in env.items()),
            f"attach-command: {shlex.join(self.command())}",
            f"attach: waiting for gRPC health SERVING on {self.address} ...",
        ]


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not serving(address):
        if time.monotonic() > deadline:
            pytest.exit(
                f"--attach: no connector served gRPC health SERVING on {address} within {timeout:g} s", 4
            )
        time.sleep(POLL_S)


ATTACHED_KEY = pytest.StashKey[Attached]()


def begin(config: pytest.Config, manifest: Manifest) -> Attached:
    """Before the first scenario: the mock exchange started, the files written, what the program
    needs printed; returns once the program serves (outside any scenario's time budget)."""
    folder = Path(tempfile.mkdtemp(prefix="conform-attach-"))
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    token_file = folder / "token"
    token_file.write_text(secrets.token_hex(16), encoding="utf-8")
    token_file.chmod(0o600)
    mock = MockExchangeServer().start()
    config.add_cleanup(mock.stop)
    port = config.getoption("attach_port") or free_port()
    setup = Attached(manifest, mock, int(port), free_port(), make_tls_material(folder / "tls"), token_file)
    config.stash[ATTACHED_KEY] = setup
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("", flush=True)
        for line in setup.instructions():
            print(line, flush=True)
        wait_serving(setup.address, float(config.getoption("attach_timeout")))
        print(f"attach: {setup.address} is serving; running the scenarios", flush=True)
    return setup


class AttachedProgram:
    """Stands for the attached program where a test would hold its RunningProgram: it serves, but
    the suite neither started it nor reads its process or its log."""

    name = PROGRAM
    running = True
    exit_observed = False

    def __init__(self, setup: Attached, item: pytest.Item) -> None:
        self._setup = setup
        self._item = item
        self.values: dict[str, Any] = {"grpc_port": setup.grpc_port, "metrics_port": setup.metrics_port}

    @property
    def address(self) -> str:
        return self._setup.address

    def not_here(self, why: str) -> NoReturn:
        not_applicable(self._item, NotApplicable(self._setup.manifest.name, mode="attach", why=why))
        raise AssertionError("unreachable")  # not_applicable raises

    @property
    def pid(self) -> int:
        self.not_here("reads the connector's process (pid, resources), which the suite did not start")

    def stop(self, timeout: float | None = None) -> int:
        self.not_here("stops the connector (SIGTERM)")

    def kill(self) -> int:
        self.not_here("kills the connector")

    def paused(self) -> Any:
        self.not_here("pauses the connector (SIGSTOP)")

    def wait(self, timeout: float) -> int:
        self.not_here("waits for the connector to exit")

    def events(self, name: str) -> Any:
        self.not_here(
            f"reads the connector's log (event {name!r}), which the attached program writes elsewhere"
        )

    def log_lines(self) -> Any:
        self.not_here("reads the connector's log, which the attached program writes elsewhere")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self.not_here(f"reads the connector's {name}, which only a program the suite started has")

    def tail(self, count: int = 0) -> str:
        return "(the attached connector's log is on its own console)"

    def __repr__(self) -> str:
        return f"<attached exchange_connector at {self._setup.address}>"


class AttachLauncher(ProgramLauncher):
    """The launcher in attach mode: it starts market_maker or live_server, never the connector."""

    def __init__(self, manifest: Manifest, workdir: Path, item: pytest.Item) -> None:
        super().__init__(manifest, workdir)
        self._item = item

    def start(self, name: str, values: Mapping[str, Any] | None = None, **options: Any) -> RunningProgram:
        if name == PROGRAM:
            why = "starts the connector itself (a lifecycle scenario: start, signal, stop or restart)"
            not_applicable(self._item, NotApplicable(self.manifest.name, mode="attach", why=why))
        return super().start(name, values, **options)


__all__ = [
    "ATTACHED_KEY",
    "AttachLauncher",
    "Attached",
    "AttachedProgram",
    "attach_mode",
    "begin",
    "wait_serving",
]
