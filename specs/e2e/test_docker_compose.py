"""§5.2 Docker Compose test: the stack of docker-compose.grpc.yml, really run on a Docker engine.

One run per module (a fixture): build → up -d (own project name, free loopback port) → wait until
every service is healthy → GET /api/account, /api/positions and / on live_server → stop →
inspect exit codes and logs → down -v → look for anything of the project left. The fixture only
observes; each acceptance criterion is its own test over those observations, so the report
says which criterion failed. The engine is driven with the compose CLI (as a user would) and
inspected through the Docker SDK for Python.

Where no engine can be reached, every test skips with that reason (docker/ci.sh starts one in
CI); specs/unit/test_compose_file.py checks the files without an engine.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import docker
import httpx
import pytest
import requests
from docker.errors import DockerException
from docker.models.containers import Container

from harness.fixtures import MetricRecorder
from harness.ports import free_port
from harness.sut.manifest import Compose
from harness.sut.program_log import error_lines
from opensqt.exchange.v1 import exchange_pb2 as pb

PROGRAMS = ("exchange_connector", "market_maker", "live_server")
HEALTHY_WITHIN_S = 60.0
BUILD_TIMEOUT_S = 420.0
STEP_TIMEOUT_S = 120.0
# the contract's decimal strings (docs/sut-manifest.md, C18): every string field but the names
ACCOUNT_DECIMALS = tuple(f.name for f in pb.Account.DESCRIPTOR.fields if f.type == f.TYPE_STRING)
POSITION_DECIMALS = tuple(
    f.name
    for f in pb.Position.DESCRIPTOR.fields
    if f.type == f.TYPE_STRING and f.name not in ("symbol", "side", "margin_type")
)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
START, HEALTHY, DATA, SHUTDOWN = "5.2.1.a", "5.2.1.b", "5.2.1.c", "5.2.1.d"

# The first run builds the image (minutes without a cache); later runs take about 20 s.
# the SUT's own stack: its manifest's [compose] table names the file and the services (rule H5)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.requires("compose")]


class StepFailed(Exception):
    """A compose step did not succeed; the message has its output and the containers' state."""


@dataclass
class Exited:
    exit_code: int | None
    oom_killed: bool
    restarts: int
    log_lines: list[str]
    error_lines: list[str]


@dataclass
class HttpAnswer:
    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class ComposeRun:
    """What one run of the stack showed; None / empty where the run did not get that far."""

    project: str
    http_port: int
    start_error: str | None = None
    up_began: float = 0.0  # time.monotonic() when `up` was run
    started: dict[str, str] = field(default_factory=dict)  # service -> container status after `up`
    healthy_s: float | None = None
    health: dict[str, str] = field(default_factory=dict)  # service -> health status at the end of the wait
    health_diagnostics: str = ""
    answers: dict[str, HttpAnswer] = field(default_factory=dict)  # path -> answer
    http_error: str | None = None
    stop_error: str | None = None
    stop_s: float | None = None
    exited: dict[str, Exited] = field(default_factory=dict)
    down_error: str | None = None
    leftovers: dict[str, list[str]] | None = None


def _compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    raise StepFailed("no compose CLI beside the engine: expected docker-compose or `docker compose`")


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _log_lines(container: Container) -> list[str]:
    raw = container.logs(stdout=True, stderr=True, timestamps=False)
    return _text(raw).splitlines()


class Stack:
    """One compose project of the SUT's compose file, with its own name and host port."""

    def __init__(self, client: docker.DockerClient, http_port: int, compose: Compose) -> None:
        self.client = client
        self.project = f"opensqt-e2e-{uuid.uuid4().hex[:10]}"
        self.http_port = http_port
        self.folder = compose.file.parent
        self.services = {service: program for program, service in compose.services.items()}
        self._cli = [*_compose_cli(), "--project-name", self.project, "--file", str(compose.file)]
        self._env = {**os.environ, compose.http_port_env: str(http_port)}
        self._label = {"label": f"com.docker.compose.project={self.project}"}

    def compose(self, *args: str, timeout: float = STEP_TIMEOUT_S) -> None:
        command = f"compose {' '.join(args)}"
        try:
            done = subprocess.run(
                [*self._cli, *args],
                cwd=self.folder,
                env=self._env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            raise StepFailed(
                f"`{command}` overran {timeout:.0f} s:\n{output[-3000:]}{self.diagnostics()}"
            ) from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            raise StepFailed(f"`{command}` exited {done.returncode}:\n{output}{self.diagnostics()}")

    def containers(self) -> dict[str, Container]:
        found = self.client.containers.list(all=True, filters=self._label)
        named = {
            container.labels.get("com.docker.compose.service", container.name): container
            for container in found
        }
        return {self.services.get(service, service): container for service, container in named.items()}

    def health(self) -> dict[str, str]:
        containers = self.containers()
        return {
            name: (containers[name].attrs["State"].get("Health") or {}).get("Status", "none")
            if name in containers
            else "missing"
            for name in PROGRAMS
        }

    def leftovers(self) -> dict[str, list[str]]:
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=self._label)],
            "networks": [n.name for n in self.client.networks.list(filters=self._label)],
            "volumes": [v.name for v in self.client.volumes.list(filters=self._label)],
        }

    def diagnostics(self) -> str:
        lines = []
        with contextlib.suppress(DockerException, requests.RequestException):
            for name, container in sorted(self.containers().items()):
                state = container.attrs.get("State", {})
                health = state.get("Health") or {}
                probe = str((health.get("Log") or [{}])[-1].get("Output", "")).strip()
                lines.append(
                    f"--- {name}: {state.get('Status')}, health {health.get('Status')}, exit {state.get('ExitCode')}"
                    + (f", last probe: {probe[-300:]}" if probe else "")
                )
                lines += _log_lines(container)[-15:]
        return "\n" + "\n".join(lines) if lines else ""

    def remove_everything(self) -> None:
        """Best effort: down, then whatever down left behind."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*self._cli, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
                cwd=self.folder,
                env=self._env,
                capture_output=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
        with contextlib.suppress(DockerException, requests.RequestException):
            for container in self.client.containers.list(all=True, filters=self._label):
                container.remove(force=True, v=True)
            for network in self.client.networks.list(filters=self._label):
                network.remove()
            for volume in self.client.volumes.list(filters=self._label):
                volume.remove(force=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """A client of a reachable Docker engine, or a skip that says why there is none."""
    with warnings.catch_warnings():
        # a failed connection attempt leaves the SDK's socket to the collector
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=30)
            client.ping()
        except (DockerException, requests.RequestException, OSError) as exc:
            gc.collect()
            pytest.skip(f"environment: no Docker engine reachable ({exc})")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def compose_run(
    engine: docker.DockerClient, compose_table: Compose, pytestconfig: pytest.Config
) -> Iterator[ComposeRun]:
    """Runs the stack once, start to finish, recording what it saw; always removes the project."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(text: str) -> None:  # progress in the CI log, past pytest's capture
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"[5.2 compose] {text}", flush=True)

    try:
        stack = Stack(engine, free_port(), compose_table)
    except StepFailed as exc:
        yield ComposeRun("", 0, start_error=str(exc))
        return
    run = ComposeRun(stack.project, stack.http_port)
    say(f"project {stack.project}, live_server on 127.0.0.1:{stack.http_port}")
    try:
        _start(stack, run, say)
        if run.start_error is None:
            _wait_until_healthy(stack, run, say)
            _read_api(run, say)
        if run.started:
            _stop_and_inspect(stack, run, say)
            _down(stack, run, say)
    finally:
        if run.leftovers != {"containers": [], "networks": [], "volumes": []}:
            stack.remove_everything()
    yield run


def _start(stack: Stack, run: ComposeRun, say: Callable[[str], None]) -> None:
    try:
        began = time.monotonic()
        stack.compose("build", timeout=BUILD_TIMEOUT_S)
        say(f"image built ({time.monotonic() - began:.1f} s)")
        run.up_began = time.monotonic()
        # compose itself waits for each healthy dependency before starting its dependents
        stack.compose("up", "--detach", timeout=HEALTHY_WITHIN_S + 60)
    except StepFailed as exc:
        run.start_error = str(exc)
    with contextlib.suppress(DockerException, requests.RequestException):
        run.started = {name: container.status for name, container in stack.containers().items()}
    if run.start_error is None:
        say(f"up: {', '.join(f'{k}={v}' for k, v in sorted(run.started.items()))}")


def _wait_until_healthy(stack: Stack, run: ComposeRun, say: Callable[[str], None]) -> None:
    began = run.up_began
    deadline = began + HEALTHY_WITHIN_S
    while True:
        run.health = stack.health()
        if all(status == "healthy" for status in run.health.values()):
            run.healthy_s = time.monotonic() - began
            say(
                f"all healthy {run.healthy_s:.1f} s after `up`: {', '.join(f'{k}={v}' for k, v in run.health.items())}"
            )
            return
        if time.monotonic() >= deadline:
            run.health_diagnostics = stack.diagnostics()
            say(f"NOT healthy within {HEALTHY_WITHIN_S:.0f} s: {run.health}")
            return
        time.sleep(0.5)


def _read_api(run: ComposeRun, say: Callable[[str], None]) -> None:
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{run.http_port}", timeout=10.0) as http:
            for path in ("/api/account", "/api/positions", "/"):
                response = http.get(path)
                run.answers[path] = HttpAnswer(
                    response.status_code, response.headers.get("content-type", ""), response.text
                )
    except httpx.HTTPError as exc:
        run.http_error = f"{type(exc).__name__}: {exc}"
    say(f"GET {', '.join(f'{path} {answer.status}' for path, answer in run.answers.items())}")


def _stop_and_inspect(stack: Stack, run: ComposeRun, say: Callable[[str], None]) -> None:
    began = time.monotonic()
    try:
        stack.compose("stop")  # SIGTERM, SIGKILL after each service's stop_grace_period
    except StepFailed as exc:
        run.stop_error = str(exc)
    run.stop_s = time.monotonic() - began
    for name, container in sorted(stack.containers().items()):
        container.reload()
        state = container.attrs["State"]
        lines = _log_lines(container)
        run.exited[name] = Exited(
            exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None,
            oom_killed=bool(state.get("OOMKilled")),
            restarts=int(container.attrs.get("RestartCount") or 0),
            log_lines=lines,
            error_lines=error_lines(lines),  # rule H4
        )
    say(
        f"stopped in {run.stop_s:.1f} s: "
        + ", ".join(
            f"{name} exit {e.exit_code} ({len(e.error_lines)} error lines)" for name, e in run.exited.items()
        )
    )


def _down(stack: Stack, run: ComposeRun, say: Callable[[str], None]) -> None:
    began = time.monotonic()
    try:
        stack.compose("down", "--volumes", "--remove-orphans")
    except StepFailed as exc:
        run.down_error = str(exc)
    run.leftovers = stack.leftovers()
    left = {kind: names for kind, names in run.leftovers.items() if names}
    say(f"down in {time.monotonic() - began:.1f} s; left behind: {left or 'nothing'}")


def _require_start(run: ComposeRun, scenario: str) -> None:
    if run.start_error is not None:
        pytest.fail(f"expected the stack to start, got: {run.start_error}")


def _check_decimal(scenario: str, where: str, value: Any) -> None:
    assert isinstance(value, str) and value.strip(), f"{where}: expected a decimal string, got {value!r}"
    try:
        number = Decimal(value)
    except InvalidOperation:
        pytest.fail(f"{where}: expected a decimal string that parses, got {value!r}")
    assert number.is_finite(), f"{where}: expected a finite decimal, got {value!r}"


# ------------------------------------------------------------------------------------------ the criteria


@pytest.mark.scenario(START)
def test_compose_up_starts_all_three_services(compose_run: ComposeRun) -> None:
    _require_start(compose_run, START)
    assert sorted(compose_run.started) == sorted(PROGRAMS), (
        f"expected containers for {sorted(PROGRAMS)}, got {sorted(compose_run.started)}"
    )
    not_running = {name: status for name, status in compose_run.started.items() if status != "running"}
    assert not not_running, f"expected every container running after `up`, got {not_running}"


@pytest.mark.scenario(HEALTHY)
def test_every_service_healthy_within_60_s(compose_run: ComposeRun, metrics: MetricRecorder) -> None:
    _require_start(compose_run, HEALTHY)
    assert compose_run.healthy_s is not None, (
        f"expected every service healthy within {HEALTHY_WITHIN_S:.0f} s of `up`, "
        f"got {compose_run.health}{compose_run.health_diagnostics}"
    )
    metrics.record("compose_healthy_s", compose_run.healthy_s, "s")
    assert compose_run.healthy_s < HEALTHY_WITHIN_S, (
        f"expected healthy within {HEALTHY_WITHIN_S:.0f} s, got {compose_run.healthy_s:.1f} s"
    )


@pytest.mark.scenario(DATA)
def test_live_server_serves_valid_account_and_positions(compose_run: ComposeRun) -> None:
    _require_start(compose_run, DATA)
    assert compose_run.http_error is None, (
        f"expected live_server to answer on 127.0.0.1:{compose_run.http_port}, got {compose_run.http_error}"
    )
    account_answer = compose_run.answers["/api/account"]
    assert account_answer.status == 200, (
        f"GET /api/account: expected 200, got {account_answer.status}: {account_answer.text[:300]}"
    )
    account = account_answer.json()
    for name in ACCOUNT_DECIMALS:
        _check_decimal(DATA, f"account.{name}", account.get(name))
    stamp = account.get("updated_at")
    assert isinstance(stamp, str) and RFC3339.match(stamp), (
        f"account.updated_at: expected an RFC 3339 timestamp, got {stamp!r}"
    )

    positions_answer = compose_run.answers["/api/positions"]
    assert positions_answer.status == 200, (
        f"GET /api/positions: expected 200, got {positions_answer.status}: {positions_answer.text[:300]}"
    )
    body = positions_answer.json()
    positions = body.get("positions") if isinstance(body, dict) else body
    assert isinstance(positions, list) and positions, f"GET /api/positions: expected positions, got {body!r}"
    for index, position in enumerate(positions):
        assert position.get("symbol"), f"positions[{index}]: expected a symbol, got {position!r}"
        for name in POSITION_DECIMALS:
            _check_decimal(DATA, f"positions[{index}].{name} ({position.get('symbol')})", position.get(name))

    dashboard = compose_run.answers["/"]
    assert dashboard.status == 200 and "html" in dashboard.content_type, (
        f"GET /: expected the dashboard page (200, HTML), got {dashboard.status} {dashboard.content_type}"
    )


@pytest.mark.scenario(SHUTDOWN)
def test_compose_down_is_clean(compose_run: ComposeRun) -> None:
    _require_start(compose_run, SHUTDOWN)
    assert compose_run.stop_error is None, f"expected `compose stop` to succeed, got {compose_run.stop_error}"
    assert sorted(compose_run.exited) == sorted(PROGRAMS), (
        f"expected three stopped containers, got {sorted(compose_run.exited)}"
    )
    for name, exited in sorted(compose_run.exited.items()):
        tail = "\n".join(exited.log_lines[-10:])
        assert exited.exit_code == 0 and not exited.oom_killed, (
            f"{name}: expected exit code 0 after SIGTERM, got {exited.exit_code}"
            f" (OOMKilled={exited.oom_killed}); last log lines:\n{tail}"
        )
        assert exited.restarts == 0, f"{name}: expected no restarts, got {exited.restarts}"
        assert not exited.error_lines, f"{name}: expected no error lines in the log, got:\n" + "\n".join(
            exited.error_lines[:10]
        )
    assert compose_run.down_error is None, f"expected `compose down` to succeed, got {compose_run.down_error}"
    left = {kind: names for kind, names in (compose_run.leftovers or {}).items() if names}
    assert compose_run.leftovers is not None and not left, (
        f"expected no containers, networks or volumes of the project left, got {left}"
    )
