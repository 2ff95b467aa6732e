"""§5.2: the SUT's Compose file is well formed (rules S1-S5), checked without a Docker engine.

The engine-backed scenario (specs/e2e/test_docker_compose.py) runs the stack for real; this test
runs wherever the file is, and catches a broken compose file before any engine is involved. The
file and its services' names come from the manifest's [compose] table; what is particular to the
reference's own image is checked in tests/test_reference_image.py.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from harness.sut.manifest import Compose

SID = "5.2.1.x1"
LOOPBACK = {"127.0.0.1", "::1"}
# ${NAME}, ${NAME:-default}, ${NAME-default}; `$$` is a literal dollar.
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")

pytestmark = [
    pytest.mark.unit,
    pytest.mark.scenario(SID),
    pytest.mark.timeout(30),
    pytest.mark.requires("compose"),
]


def _with_defaults(value: Any) -> Any:
    """The file as compose reads it with no variables set: every ${X:-d} becomes d."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: match.group("default") or "", value).replace("$$", "$")
    if isinstance(value, list):
        return [_with_defaults(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_defaults(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose(compose_table: Compose) -> dict[str, Any]:
    raw = yaml.safe_load(compose_table.file.read_text(encoding="utf-8"))
    assert isinstance(raw, dict), (
        f"under rule S1, expected a mapping in {compose_table.file.name}, got {type(raw).__name__}"
    )
    return dict(_with_defaults(raw))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any], compose_table: Compose) -> dict[str, dict[str, Any]]:
    """The program's services, by program name (the manifest names each program's service)."""
    found = dict(compose.get("services") or {})
    return {program: found[name] for program, name in compose_table.services.items() if name in found}


def _argv(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def test_compose_file_is_the_compose_specification(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "expected no `version:` key (Compose Specification), got one"
    assert set(compose) <= {"services", "networks", "volumes", "configs", "secrets"} | {
        key for key in compose if str(key).startswith("x-")
    }, f"expected only Compose Specification top-level keys, got {sorted(compose)}"


def test_three_services(services: dict[str, dict[str, Any]], compose_table: Compose) -> None:
    wanted = compose_table.services
    missing = sorted(f"{program} ({name})" for program, name in wanted.items() if program not in services)
    assert not missing, f"under rule S1, expected a service for every program, missing {missing}"


@pytest.mark.parametrize("name", ["exchange_connector", "market_maker", "live_server"])
def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]], name: str) -> None:
    check = (services.get(name) or {}).get("healthcheck") or {}
    test = _argv(check.get("test", []))
    assert test[:1] in (["CMD"], ["CMD-SHELL"]), (
        f"under rule S2, {name}: expected a healthcheck test, got {test}"
    )
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"under rule S2, {name}: expected healthcheck.{key}, got keys {sorted(check)}"


def test_clients_start_after_a_healthy_connector(
    services: dict[str, dict[str, Any]], compose_table: Compose
) -> None:
    connector = compose_table.services["exchange_connector"]
    for name in ("market_maker", "live_server"):
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), (
            f"under rule S3, {name}: expected depends_on in long form (with conditions), got {depends!r}"
        )
        condition = (depends.get(connector) or {}).get("condition")
        assert condition == "service_healthy", (
            f"under rule S3, {name}: expected depends_on {connector} condition service_healthy, "
            f"got {condition!r}"
        )


def _published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of every published port; host ip "" = every interface."""
    published = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            entry = (
                str(port.get("host_ip", "")),
                str(port.get("published", "")),
                str(port.get("target", "")),
            )
        else:
            spec = str(port).split("/")[0]
            if spec.startswith("["):  # [::1]:8080:8080
                host_ip, _, rest = spec[1:].partition("]:")
                host_port, _, target = rest.partition(":")
                entry = (host_ip, host_port, target)
            else:
                parts = spec.split(":")
                entry = (("", "", "", *parts)[-3], ("", "", *parts)[-2], parts[-1])
        published.append(entry)
    return published


def test_live_server_port_published_on_loopback_only(
    services: dict[str, dict[str, Any]], compose_table: Compose
) -> None:
    raw = yaml.safe_load(compose_table.file.read_text(encoding="utf-8"))
    raw_ports = str((raw["services"][compose_table.services["live_server"]] or {}).get("ports", []))
    assert "${" + compose_table.http_port_env in raw_ports, (
        f"under rule S4, live_server: expected its host port set by ${{{compose_table.http_port_env}}} "
        f"(the manifest's compose.http_port_env), got ports {raw_ports}"
    )
    published = _published(services["live_server"])
    assert len(published) == 1, f"under rule S4, live_server: expected one published port, got {published}"
    host_ip, host_port, _ = published[0]
    assert host_ip in LOOPBACK, (
        f"under rule S4, live_server: expected the port bound to 127.0.0.1, got {host_ip or 'all'}"
    )
    assert host_port.isdigit(), f"under rule S4, live_server: expected a default host port, got {host_port!r}"
    for name, service in services.items():
        for ip, _, _ in _published(service):
            assert ip in LOOPBACK, (
                f"under rule S4, {name}: expected ports published on loopback only, got {ip or 'all'}"
            )


def test_compose_reads_no_variable_without_a_default(compose_table: Compose) -> None:
    text = compose_table.file.read_text(encoding="utf-8")
    bare = [match.group(0) for match in _VARIABLE.finditer(text) if match.group("default") is None]
    assert not bare, (
        f"under rule S5, expected every ${{VAR}} with a default (the stack runs with no .env), got {bare}"
    )
