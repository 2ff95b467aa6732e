"""§5.2 Docker Compose test: the stack of docker-compose.grpc.yml, really run on a Docker engine.

build → up -d (own project name, free loopback port) → every service healthy within 60 s →
GET /api/account and /api/positions on live_server → stop → every container exited 0 with no
error lines in its log → down -v → nothing of the project left. The engine is driven with the
compose CLI (as a user would) and inspected through the Docker SDK for Python.
Where no engine can be reached, the test skips with that reason (docker/ci.sh starts one in CI);
specs/unit/test_compose_file.py checks the files without an engine.
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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import requests
from docker.errors import DockerException
from docker.models.containers import Container

from harness.plugin import MetricRecorder

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.grpc.yml"
SERVICES = ("exchange_connector", "market_maker", "live_server")
HEALTHY_WITHIN_S = 60.0
BUILD_TIMEOUT_S = 420.0
ACCOUNT_DECIMALS = (
    "total_balance",
    "available_balance",
    "equity",
    "unrealized_pnl",
    "margin_used",
    "margin_level",
    "leverage",
)
POSITION_DECIMALS = ("size", "entry_price", "mark_price", "leverage", "unrealized_pnl", "liquidation")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
ERROR_LEVELS = {"error", "critical", "fatal", "exception"}
ERROR_TEXT = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\)")
START, HEALTHY, DATA, SHUTDOWN = "5.2.1.a", "5.2.1.b", "5.2.1.c", "5.2.1.d"

pytestmark = [pytest.mark.e2e, pytest.mark.scenario(START, HEALTHY, DATA, SHUTDOWN)]


@pytest.fixture
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


def _compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(
        f"[{START}] expected the compose CLI (docker-compose or `docker compose`) beside the engine, got none"
    )


class Stack:
    """One compose project of docker-compose.grpc.yml, with its own name and host port."""

    def __init__(self, client: docker.DockerClient, http_port: int) -> None:
        self.client = client
        self.project = f"opensqt-e2e-{uuid.uuid4().hex[:10]}"
        self.http_port = http_port
        self._cli = [*_compose_cli(), "--project-name", self.project, "--file", str(COMPOSE_FILE)]
        self._env = {**os.environ, "LIVE_SERVER_PORT": str(http_port)}

    def compose(self, *args: str, timeout: float, scenario: str) -> str:
        try:
            done = subprocess.run(
                [*self._cli, *args],
                cwd=ROOT,
                env=self._env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            pytest.fail(
                f"[{scenario}] expected `compose {' '.join(args)}` within {timeout:.0f} s, it overran:\n{output[-3000:]}"
            )
        output = done.stdout + done.stderr
        assert done.returncode == 0, (
            f"[{scenario}] expected `compose {' '.join(args)}` to exit 0, got {done.returncode}:\n{output[-3000:]}"
            + self.diagnostics()
        )
        return output

    def containers(self) -> dict[str, Container]:
        found = self.client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"}
        )
        return {
            container.labels.get("com.docker.compose.service", container.name): container
            for container in found
        }

    def leftovers(self) -> dict[str, list[str]]:
        label = {"label": f"com.docker.compose.project={self.project}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=label)],
            "networks": [n.name for n in self.client.networks.list(filters=label)],
            "volumes": [v.name for v in self.client.volumes.list(filters=label)],
        }

    def diagnostics(self) -> str:
        lines = []
        with contextlib.suppress(DockerException, requests.RequestException):
            for name, container in sorted(self.containers().items()):
                state = container.attrs.get("State", {})
                health = state.get("Health") or {}
                probe = (health.get("Log") or [{}])[-1].get("Output", "").strip()
                lines.append(
                    f"--- {name}: {state.get('Status')}, health {health.get('Status')}, exit {state.get('ExitCode')}"
                    + (f", last probe: {probe[-300:]}" if probe else "")
                )
                lines += _log_lines(container)[-15:]
        return "\n" + "\n".join(lines) if lines else ""

    def remove_everything(self) -> None:
        """Best effort, after a failure: down, then whatever down left behind."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*self._cli, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
                cwd=ROOT,
                env=self._env,
                capture_output=True,
                timeout=120,
                check=False,
            )
        with contextlib.suppress(DockerException, requests.RequestException):
            label = {"label": f"com.docker.compose.project={self.project}"}
            for container in self.client.containers.list(all=True, filters=label):
                container.remove(force=True, v=True)
            for network in self.client.networks.list(filters=label):
                network.remove()
            for volume in self.client.volumes.list(filters=label):
                volume.remove(force=True)


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _log_lines(container: Container) -> list[str]:
    raw = container.logs(stdout=True, stderr=True, timestamps=False)
    return raw.decode("utf-8", "replace").splitlines()


def _error_lines(lines: list[str]) -> list[str]:
    errors = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if str(record.get("level", "")).lower() in ERROR_LEVELS:
                errors.append(line)
        elif ERROR_TEXT.search(line):
            errors.append(line)
    return errors


def _phase(say: Callable[[str], None], text: str, started: float) -> float:
    elapsed = time.monotonic() - started
    say(f"[5.2 compose] {text} ({elapsed:.1f} s)")
    return elapsed


def _wait_healthy(stack: Stack, deadline: float) -> dict[str, str]:
    status: dict[str, str] = {}
    while True:
        containers = stack.containers()
        status = {
            name: (containers[name].attrs["State"].get("Health") or {}).get("Status", "none")
            if name in containers
            else "missing"
            for name in SERVICES
        }
        if all(value == "healthy" for value in status.values()) or time.monotonic() >= deadline:
            return status
        time.sleep(0.5)


def _check_decimal(scenario: str, where: str, value: Any) -> None:
    assert isinstance(value, str) and value.strip(), (
        f"[{scenario}] {where}: expected a decimal string, got {value!r}"
    )
    try:
        number = Decimal(value)
    except InvalidOperation:
        pytest.fail(f"[{scenario}] {where}: expected a decimal string that parses, got {value!r}")
    assert number.is_finite(), f"[{scenario}] {where}: expected a finite decimal, got {value!r}"


def _check_api(base_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        account_response = http.get("/api/account")
        positions_response = http.get("/api/positions")
        dashboard = http.get("/")
    assert account_response.status_code == 200, (
        f"[{DATA}] GET /api/account: expected 200, got {account_response.status_code}: {account_response.text[:300]}"
    )
    account = account_response.json()
    for field in ACCOUNT_DECIMALS:
        _check_decimal(DATA, f"account.{field}", account.get(field))
    stamp = account.get("updated_at")
    assert isinstance(stamp, str) and RFC3339.match(stamp), (
        f"[{DATA}] account.updated_at: expected an RFC 3339 timestamp, got {stamp!r}"
    )
    assert positions_response.status_code == 200, (
        f"[{DATA}] GET /api/positions: expected 200, got {positions_response.status_code}: {positions_response.text[:300]}"
    )
    body = positions_response.json()
    positions = body.get("positions") if isinstance(body, dict) else body
    assert isinstance(positions, list) and positions, (
        f"[{DATA}] GET /api/positions: expected positions, got {body!r}"
    )
    for index, position in enumerate(positions):
        assert position.get("symbol"), (
            f"[{DATA}] positions[{index}].symbol: expected a symbol, got {position!r}"
        )
        for field in POSITION_DECIMALS:
            _check_decimal(
                DATA, f"positions[{index}].{field} ({position.get('symbol')})", position.get(field)
            )
    assert dashboard.status_code == 200 and "html" in dashboard.headers.get("content-type", ""), (
        f"[{DATA}] GET /: expected the dashboard page (200, HTML), got {dashboard.status_code} "
        f"{dashboard.headers.get('content-type')}"
    )
    return account, positions


@pytest.mark.timeout(600)
def test_compose_stack_up_healthy_serving_and_down_clean(
    engine: docker.DockerClient,
    free_port: Callable[[], int],
    metrics: MetricRecorder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def say(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    stack = Stack(engine, free_port())
    say(f"\n[5.2 compose] project {stack.project}, live_server on 127.0.0.1:{stack.http_port}")
    finished = False
    try:
        started = time.monotonic()
        stack.compose("build", timeout=BUILD_TIMEOUT_S, scenario=START)
        metrics.record("compose_build_s", _phase(say, "image built", started), "s")

        # 5.2.1.a: up starts all three services (compose waits for the healthy dependencies itself)
        started = time.monotonic()
        stack.compose("up", "--detach", timeout=HEALTHY_WITHIN_S + 60, scenario=START)
        containers = stack.containers()
        assert sorted(containers) == sorted(SERVICES), (
            f"[{START}] expected containers for {sorted(SERVICES)}, got {sorted(containers)}"
            + stack.diagnostics()
        )
        not_running = {name: c.status for name, c in containers.items() if c.status != "running"}
        assert not not_running, (
            f"[{START}] expected every container running, got {not_running}" + stack.diagnostics()
        )
        _phase(say, "up: three containers running", started)

        # 5.2.1.b: every service healthy within 60 s of `up`
        status = _wait_healthy(stack, started + HEALTHY_WITHIN_S)
        healthy_s = time.monotonic() - started
        assert all(value == "healthy" for value in status.values()), (
            f"[{HEALTHY}] expected every service healthy within {HEALTHY_WITHIN_S:.0f} s, got {status}"
            + stack.diagnostics()
        )
        metrics.record("compose_healthy_s", healthy_s, "s")
        _phase(say, f"all healthy: {', '.join(f'{k}={v}' for k, v in status.items())}", started)

        # 5.2.1.c: live_server serves valid data on the published loopback port
        account, positions = _check_api(f"http://127.0.0.1:{stack.http_port}")
        say(
            f"[5.2 compose] /api/account equity={account['equity']} updated_at={account['updated_at']}; "
            f"/api/positions {len(positions)}: {', '.join(str(p['symbol']) for p in positions)}"
        )

        # 5.2.1.d: a graceful stop: exit code 0, no error lines, no restarts
        started = time.monotonic()
        stack.compose("stop", timeout=120, scenario=SHUTDOWN)
        stop_s = _phase(say, "stopped", started)
        metrics.record("compose_stop_s", stop_s, "s")
        for name, container in sorted(stack.containers().items()):
            container.reload()
            state = container.attrs["State"]
            lines = _log_lines(container)
            assert state.get("ExitCode") == 0 and not state.get("OOMKilled"), (
                f"[{SHUTDOWN}] {name}: expected exit code 0 after SIGTERM, got {state.get('ExitCode')}"
                f" (OOMKilled={state.get('OOMKilled')}); last log lines:\n" + "\n".join(lines[-15:])
            )
            assert container.attrs.get("RestartCount", 0) == 0, (
                f"[{SHUTDOWN}] {name}: expected no restarts, got {container.attrs.get('RestartCount')}"
            )
            errors = _error_lines(lines)
            assert not errors, f"[{SHUTDOWN}] {name}: expected no error lines in the log, got:\n" + "\n".join(
                errors[:10]
            )
            say(f"[5.2 compose]   {name}: exit 0, {len(lines)} log lines, none an error")

        started = time.monotonic()
        stack.compose("down", "--volumes", "--remove-orphans", timeout=120, scenario=SHUTDOWN)
        metrics.record("compose_down_s", _phase(say, "down", started), "s")
        left = {kind: names for kind, names in stack.leftovers().items() if names}
        assert not left, f"[{SHUTDOWN}] expected no containers, networks or volumes left, got {left}"
        say("[5.2 compose] nothing left behind")
        finished = True
    finally:
        if not finished:
            stack.remove_everything()
