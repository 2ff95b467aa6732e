"""The exchange_connector program: command line, environment, exit codes, signals, health, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.tls import TlsMaterial
from implementation.connector.__main__ import main
from implementation.connector.cli import HealthSettings, ServeSettings, UsageError, parse

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------- parsing


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"expected exit code 2 for {argv}, got {code} (stderr: {err!r})"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exchange_connector: error: "), (
        f"expected one line, got {err!r}"
    )
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "required: {serve,health}"),
        (["serve", "--listen", "nowhere"], "'nowhere' is not HOST:PORT"),
        (["serve", "--listen", "::1:50051"], "IPv6 host goes in brackets"),
        (["serve", "--exchange", "binance"], "invalid choice: 'binance'"),
        (["serve", "--exchange", "grpc"], "--exchange grpc needs --upstream"),
        (["serve", "--upstream", "127.0.0.1:1"], "--upstream is only used with --exchange grpc"),
        (["serve", "--queue-size", "0"], "must be >= 1, got 0"),
        (["serve", "--grace-period", "-1"], "must be >= 0, got -1"),
        (["serve", "--sim-interval", "0"], "must be > 0, got 0"),
        (["serve", "--sim-symbols", "btcusdt"], "'btcusdt' is not a valid instrument name"),
        (["serve", "--log-level", "loud"], "invalid choice: 'loud'"),
        (["serve", "--token", " spaced "], "one non-empty word"),
        (["serve", "--tls-cert", "server.pem"], "--tls-cert and --tls-key go together"),
        (["health", "--timeout", "soon"], "'soon' is not a number"),
    ],
)
def test_bad_command_line_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    line = one_line_error(capsys, argv)
    assert says in line, f"expected the error to say {says!r}, got {line!r}"


def test_unreadable_or_non_pem_certificate_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tls_material: TlsMaterial
) -> None:
    missing = tmp_path / "missing.pem"
    line = one_line_error(
        capsys, ["serve", "--tls-cert", str(missing), "--tls-key", str(tls_material.key_pem)]
    )
    assert f"--tls-cert {str(missing)!r} cannot be read: No such file or directory" in line, line
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    line = one_line_error(
        capsys, ["serve", "--tls-cert", str(tls_material.cert_pem), "--tls-key", str(garbage)]
    )
    assert "is not a PEM file" in line, line
    line = one_line_error(
        capsys,
        ["serve", "--tls-cert", str(tls_material.cert_pem), "--tls-key", str(tls_material.key_pem),
         "--tls-client-ca", str(tmp_path)],
    )  # fmt: skip
    assert "--tls-client-ca" in line and "cannot be read" in line, line
    line = one_line_error(
        capsys,
        ["serve", "--tls-cert", str(tls_material.cert_pem), "--tls-key", str(tls_material.wrong_key_pem)],
    )
    assert "are not a usable pair" in line, line


def test_every_flag_has_an_environment_variable_and_flags_win() -> None:
    env = {
        "EXCHANGE_CONNECTOR_LISTEN": "0.0.0.0:6000",
        "EXCHANGE_CONNECTOR_EXCHANGE": "grpc",
        "EXCHANGE_CONNECTOR_UPSTREAM": "127.0.0.1:7000",
        "EXCHANGE_CONNECTOR_UPSTREAM_TOKEN": "up-token",
        "EXCHANGE_CONNECTOR_TOKEN": "my-token",
        "EXCHANGE_CONNECTOR_METRICS_LISTEN": "127.0.0.1:9100",
        "EXCHANGE_CONNECTOR_LOG_FORMAT": "text",
        "EXCHANGE_CONNECTOR_GRACE_PERIOD": "2.5",
        "EXCHANGE_CONNECTOR_QUEUE_SIZE": "64",
        "EXCHANGE_CONNECTOR_LOG_LEVEL": "",  # empty counts as unset
    }
    settings = parse(["serve", "--grace-period", "1"], env)
    assert isinstance(settings, ServeSettings)
    assert (settings.listen, settings.exchange, settings.upstream) == (
        "0.0.0.0:6000",
        "grpc",
        "127.0.0.1:7000",
    )
    assert (settings.token, settings.upstream_token, settings.metrics_listen) == (
        "my-token",
        "up-token",
        "127.0.0.1:9100",
    )
    assert (settings.log_format, settings.log_level, settings.queue_size) == ("text", "info", 64)
    assert settings.grace_period == 1.0, "a flag on the command line wins over the environment"


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(UsageError, match=r"^EXCHANGE_CONNECTOR_QUEUE_SIZE: 'many' is not an integer$"):
        parse(["serve"], {"EXCHANGE_CONNECTOR_QUEUE_SIZE": "many"})
    with pytest.raises(
        UsageError, match=r"^EXCHANGE_CONNECTOR_EXCHANGE: 'ftx' is not one of sim, grpc, mock$"
    ):
        parse(["serve"], {"EXCHANGE_CONNECTOR_EXCHANGE": "ftx"})


def test_health_defaults_to_the_listen_address_on_loopback() -> None:
    settings = parse(["health"], {"EXCHANGE_CONNECTOR_LISTEN": "0.0.0.0:6001"})
    assert isinstance(settings, HealthSettings)
    assert settings.address == "127.0.0.1:6001", settings
    settings = parse(["health", "--address", "127.0.0.1:7"], {"EXCHANGE_CONNECTOR_HEALTH_TIMEOUT": "0.5"})
    assert isinstance(settings, HealthSettings) and (settings.address, settings.timeout) == (
        "127.0.0.1:7",
        0.5,
    )


# ---------------------------------------------------------------------------------------------- the program


def operator_environment() -> dict[str, str]:
    """This process's environment as an operator's shell would have it: without the gRPC core
    verbosity that importing another program's package here sets (the connector picks its own)."""
    return {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}


class Program:
    """The connector as a subprocess, its stderr (the log) in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "implementation.connector", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                env={**operator_environment(), "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def wait_event(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records() if r.get("event") == event]
            if found:
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(
            f"expected a {event!r} event, got none (exit {self.process.poll()}); log: {self.log.read_text()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"expected the program to exit within {timeout} s of {signal.Signals(sig).name}")


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    started: list[Program] = []

    def start(*args: str) -> Program:
        program = Program(list(args), tmp_path / f"connector-{len(started)}.log")
        started.append(program)
        return program

    yield start
    for program in started:
        if program.process.poll() is None:
            program.process.kill()
            program.process.wait()


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "implementation.connector", "health", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_health_serves_metrics_and_exits_0_on_signal(
    run: Any, free_port: Any, sig: int
) -> None:
    port, metrics_port = free_port(), free_port()
    program = run("serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
                  "--sim-interval", "0.05")  # fmt: skip
    ready = program.wait_event("ready")
    assert ready["port"] == port, f"expected the ready event to carry port {port}, got {ready}"
    checked = health("--address", f"127.0.0.1:{port}")
    assert (checked.returncode, checked.stdout.strip()) == (0, f"127.0.0.1:{port}: SERVING"), checked
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5, trust_env=False).text
    for name in (
        'exchange_connector_subscribers{topic="account"} 0.0',
        'exchange_connector_messages_sent_total{topic="positions"}',
        'exchange_connector_subscribers_dropped_total{topic="account"} 0.0',
        "exchange_connector_upstream_connections 1.0",
        "exchange_connector_upstream_reconnects_total 0.0",
    ):
        assert name in text, f"expected /metrics to show {name!r}; got:\n{text}"
    assert program.stop(sig) == 0, f"expected exit code 0 after {signal.Signals(sig).name}"
    events = [r["event"] for r in program.records()]
    assert events.index("shutdown_started") < events.index("shutdown_complete"), events
    assert not [r for r in program.records() if r["level"] in ("error", "critical")], (
        "no error lines expected"
    )


def test_health_exit_codes(run: Any, free_port: Any) -> None:
    nothing = free_port()
    refused = health("--address", f"127.0.0.1:{nothing}", "--timeout", "1")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused
    port = free_port()
    # a connector whose upstream never answers stays NOT_SERVING
    program = run("serve", "--listen", f"127.0.0.1:{port}", "--exchange", "grpc", "--upstream",
                  f"127.0.0.1:{nothing}", "--upstream-connect-timeout", "0.5")  # fmt: skip
    program.wait_event("listening")
    not_serving = health("--address", f"127.0.0.1:{port}")
    assert (not_serving.returncode, not_serving.stdout.strip()) == (1, f"127.0.0.1:{port}: NOT_SERVING"), (
        not_serving
    )
    assert health("--address", "bad").returncode == 2
    assert program.stop() == 0


def test_mutual_tls_program_and_health(run: Any, free_port: Any, tls_material: TlsMaterial) -> None:
    port = free_port()
    program = run("serve", "--listen", f"127.0.0.1:{port}", "--tls-cert", str(tls_material.cert_pem),
                  "--tls-key", str(tls_material.key_pem), "--tls-client-ca", str(tls_material.ca_pem))  # fmt: skip
    program.wait_event("ready")
    client = ["--tls-cert", str(tls_material.client_cert_pem), "--tls-key", str(tls_material.client_key_pem)]
    ok = health("--address", f"127.0.0.1:{port}", "--tls-ca", str(tls_material.ca_pem), *client)
    assert ok.returncode == 0, f"expected a client with a certificate to be served, got {ok}"
    anonymous = health("--address", f"127.0.0.1:{port}", "--tls-ca", str(tls_material.ca_pem))
    assert anonymous.returncode == 1, f"expected a client without a certificate refused, got {anonymous}"
    plaintext = health("--address", f"127.0.0.1:{port}")
    assert plaintext.returncode == 1, f"expected a plaintext client refused, got {plaintext}"
    assert program.stop() == 0


def test_port_in_use_fails_with_exit_1_and_says_so(run: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        program = run("serve", "--listen", f"127.0.0.1:{port}")
        code = program.process.wait(30)
    failed = [r for r in program.records() if r.get("event") == "failed"]
    assert code == 1, f"expected exit code 1, got {code}"
    assert failed and f"cannot listen on 127.0.0.1:{port}" in failed[0]["reason"], program.records()


def test_text_log_format(run: Any, free_port: Any) -> None:
    program = run("serve", "--listen", f"127.0.0.1:{free_port()}", "--log-format", "text")
    deadline = time.monotonic() + 15
    while " ready " not in program.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert program.stop() == 0
    lines = program.log.read_text().splitlines()
    assert any(" info    implementation.connector_core.server ready port=" in line for line in lines), lines
