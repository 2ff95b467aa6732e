"""The reference's own image and Compose stack (docker-compose.grpc.yml, Dockerfile, .dockerignore):
what is particular to them, beyond the rules every SUT's compose file meets (specs/unit/test_compose_file.py)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from specs.unit.test_compose_file import _argv, _with_defaults

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.grpc.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SID = "the reference image"
SERVICES = {"exchange_connector", "market_maker", "live_server"}
PACKAGES = {
    "exchange_connector": "implementation.connector",
    "market_maker": "implementation.market_maker",
    "live_server": "implementation.live_server",
}
BASE_IMAGE = "python:3.11-slim"

pytestmark = [pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return dict(_with_defaults(raw).get("services") or {})


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_runs_its_program_from_the_local_image(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    command = _argv(service.get("command", []))
    assert command[:3] == ["python", "-m", PACKAGES[name]], (
        f"[{SID}] {name}: expected command `python -m {PACKAGES[name]} ...` in exec form, got {command}"
    )
    image = str(service.get("image", ""))
    assert image and not image.endswith(":latest") and ":" in image, (
        f"[{SID}] {name}: expected a local image with an explicit tag (never `latest`), got {image!r}"
    )
    assert service.get("pull_policy") == "never", (
        f"[{SID}] {name}: expected pull_policy: never (the image is built here), got {service.get('pull_policy')!r}"
    )
    assert service.get("stop_grace_period"), f"[{SID}] {name}: expected a stop_grace_period, got none"


def test_one_image_built_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    # the programs' services; the monitoring profile's Prometheus runs an upstream image
    images = {str(services[name]["image"]) for name in SERVICES}
    assert len(images) == 1, f"[{SID}] expected one image for the three programs, got {sorted(images)}"
    built = {name: service["build"] for name, service in services.items() if "build" in service}
    assert built, f"[{SID}] expected a service with a build section, got none"
    for name, build in built.items():
        dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        context = build.get("context", ".") if isinstance(build, dict) else build
        path = (COMPOSE_FILE.parent / context / dockerfile).resolve()
        assert path == DOCKERFILE, f"[{SID}] {name}: expected to build {DOCKERFILE}, got {path}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_health_check_uses_the_programs_own_probe(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck") or {}
    test = _argv(check.get("test", []))
    assert test[:1] in (["CMD"], ["CMD-SHELL"]), f"[{SID}] {name}: expected a healthcheck test, got {test}"
    command = test[1:] if test[0] == "CMD" else shlex.split(" ".join(test[1:]))
    assert command[:4] == ["python", "-m", PACKAGES[name], "health"], (
        f"[{SID}] {name}: expected `python -m {PACKAGES[name]} health ...`, got {command}"
    )
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"[{SID}] {name}: expected healthcheck.{key}, got keys {sorted(check)}"
    if name == "live_server":
        assert any(arg.endswith("/health") for arg in command), (
            f"[{SID}] live_server: expected the probe to GET /health, got {command}"
        )


def test_connector_runs_the_simulated_exchange_by_default(services: dict[str, dict[str, Any]]) -> None:
    environment = services["exchange_connector"].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    assert environment.get("EXCHANGE_CONNECTOR_EXCHANGE") == "sim", (
        f"[{SID}] expected EXCHANGE_CONNECTOR_EXCHANGE default 'sim', got {environment.get('EXCHANGE_CONNECTOR_EXCHANGE')!r}"
    )
    listen = str(environment.get("EXCHANGE_CONNECTOR_LISTEN", ""))
    assert listen.endswith(":50051"), (
        f"[{SID}] expected the connector to listen on port 50051, got {listen!r}"
    )


@pytest.mark.parametrize(
    ("name", "exchange_key"), [("market_maker", "current_exchange"), ("live_server", "exchange_type")]
)
def test_client_configs_are_mounted_and_point_at_the_connector(
    services: dict[str, dict[str, Any]], name: str, exchange_key: str
) -> None:
    command = _argv(services[name]["command"])
    config_path = command[command.index("--config") + 1]
    mounts = {}
    for volume in services[name].get("volumes", []):
        host_path, target = str(volume).split(":")[:2]
        mounts[target] = host_path
    assert config_path in mounts, f"[{SID}] {name}: expected {config_path} mounted, got mounts {mounts}"
    source = (COMPOSE_FILE.parent / mounts[config_path]).resolve()
    assert source.is_file(), f"[{SID}] {name}: expected the config file {source} to exist, got none"
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    assert config.get(exchange_key) == "remote", (
        f"[{SID}] {name}: expected {exchange_key}: remote, got {config.get(exchange_key)!r}"
    )
    host, _, port = str(config.get("exchange_grpc_address", "")).rpartition(":")
    connector = services["exchange_connector"]
    names = {
        "exchange_connector",
        *((connector.get("networks") or {}).get("default") or {}).get("aliases", []),
    }
    assert host in names and port == "50051", (
        f"[{SID}] {name}: expected exchange_grpc_address at the connector ({sorted(names)}:50051), got {host}:{port}"
    )
    if name == "market_maker":
        # `market_maker health --config` reads the heartbeat file the running program writes
        heartbeat = str(config.get("health_file", ""))
        writable = [str(path).split(":")[0] for path in services[name].get("tmpfs", [])]
        assert heartbeat and (
            not services[name].get("read_only") or any(heartbeat.startswith(path + "/") for path in writable)
        ), f"[{SID}] market_maker: expected health_file on a writable path ({writable}), got {heartbeat!r}"
    if name == "live_server":
        assert str(config.get("listen", "")).endswith(":8080"), (
            f"[{SID}] live_server: expected listen on container port 8080, got {config.get('listen')!r}"
        )


def test_dockerfile_basics() -> None:
    instructions = _dockerfile_instructions()
    froms = [argument.split()[0] for keyword, argument in instructions if keyword == "FROM"]
    assert froms and froms[-1] == BASE_IMAGE, (
        f"[{SID}] expected the final stage FROM {BASE_IMAGE}, got {froms}"
    )
    assert all(image == BASE_IMAGE or ":" not in image for image in froms), (
        f"[{SID}] expected every stage based on {BASE_IMAGE} (or an earlier stage), got {froms}"
    )
    users = [argument.strip() for keyword, argument in instructions if keyword == "USER"]
    assert users, f"[{SID}] expected a USER instruction (non-root), got none"
    assert users[-1].split(":")[0] not in {"root", "0"}, (
        f"[{SID}] expected a non-root USER, got {users[-1]!r}"
    )
    installs = [
        argument for keyword, argument in instructions if keyword == "RUN" and "pip install" in argument
    ]
    assert installs and all("requirements.lock" in argument for argument in installs), (
        f"[{SID}] expected every pip install constrained by requirements.lock, got {installs}"
    )
    for keyword in ("CMD", "ENTRYPOINT"):
        for keyword_found, argument in instructions:
            if keyword_found == keyword:
                assert argument.lstrip().startswith("["), (
                    f"[{SID}] expected {keyword} in exec form (python as PID 1 receives SIGTERM), got {argument}"
                )


def test_build_context_excludes_local_state() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    patterns = [line for line in patterns if not line.startswith("#")]
    excludes_all = "*" in patterns
    for path in (".git", ".venv", "reports"):
        re_included = any(line.lstrip("!").rstrip("/") == path for line in patterns if line.startswith("!"))
        excluded = (excludes_all and not re_included) or any(line.rstrip("/") == path for line in patterns)
        assert excluded, f"[{SID}] expected .dockerignore to exclude {path}, got patterns {patterns}"
