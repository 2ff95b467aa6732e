"""The system-under-test (SUT) manifest: which programs to run and what they claim to support.

Format (TOML), documented in docs/sut-manifest.md; the reference implementation's own manifest,
implementation/sut.toml, is the default and a worked example.
"""

from __future__ import annotations

import hashlib
import shutil
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "implementation" / "sut.toml"
PROGRAMS = ("exchange_connector", "market_maker", "live_server")
# Programs a manifest may add; each one goes with the capability that needs it.
OPTIONAL_PROGRAMS = {"client_driver": "client_library"}
PLACEHOLDERS = frozenset(
    {
        "python",  # the interpreter running the suite
        "grpc_port",  # the port the program's gRPC server must listen on (127.0.0.1)
        "http_port",  # the port live_server's HTTP server must listen on (127.0.0.1)
        "metrics_port",  # the port of the connector's /metrics endpoint
        "upstream",  # host:port of the harness's mock exchange (ExchangeService)
        "connector",  # host:port of the exchange_connector under test
        "config",  # path of the program's config file, written from its `config` template
        "tls_cert",  # server certificate (PEM), when the test enables TLS
        "tls_key",  # server private key (PEM)
        "tls_ca",  # CA that signed the server certificate (PEM), for clients
        "token",  # bearer token, when the test enables token auth
        "token_file",  # a file (mode 0600) holding that token, so it stays out of `ps`
        "workdir",  # a private scratch folder for this program
        "root",  # the folder holding the manifest
    }
)
READINESS = ("grpc-health", "http", "log")
DRIVER_READY = "stdio"  # a client driver is ready when it prints its `ready` event
CAPABILITIES = frozenset(
    {
        "tls",  # TLS on the connector (server cert; clients with a CA file)
        "token_auth",  # bearer-token auth on the connector, health exempt
        "metrics",  # a Prometheus /metrics endpoint on the connector
        "websocket",  # live_server's /ws feed
        "dashboard",  # live_server's dashboard page at /
        "http_hardening",  # live_server's limits against hostile clients (rules L20-L24)
        "reflection",  # gRPC server reflection on the connector
        "health_command",  # a health subcommand usable by container health checks
        "client_library",  # a client library behind [programs.client_driver] (docs/client-driver.md)
    }
)


class ManifestError(ValueError):
    """The manifest cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class Compose:
    """The SUT's own Compose stack (§5.2): its file, its services' names and the variable that sets
    live_server's published host port. A manifest without [compose] makes §5.2 not applicable."""

    file: Path
    services: Mapping[str, str]  # program name -> service name
    http_port_env: str


@dataclass(frozen=True)
class Program:
    name: str
    command: tuple[str, ...]
    ready: str  # "grpc-health", "http:/health", "log:<event>" or, for a client driver, "stdio"
    config: str | None = None  # a config file template
    tls_args: tuple[str, ...] = ()
    token_args: tuple[str, ...] = ()
    health_command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 10.0

    def render(self, template: str, values: Mapping[str, Any]) -> str:
        return template.format_map(_Strict(values, self.name))

    def render_command(
        self, values: Mapping[str, Any], *, tls: bool = False, token: bool = False
    ) -> list[str]:
        args = list(self.command)
        if tls:
            args += self.tls_args
        if token:
            args += self.token_args
        return [self.render(arg, values) for arg in args]


@dataclass(frozen=True)
class Manifest:
    name: str
    path: Path
    digest: str
    programs: Mapping[str, Program]
    capabilities: frozenset[str]
    events: Mapping[str, str]
    known_failures: Mapping[str, str]
    description: str = ""
    compose: Compose | None = None

    def has_capability(self, capability: str) -> bool:
        # `compose` is claimed by a [compose] table, not by the capabilities list
        return capability in self.capabilities or (capability == "compose" and self.compose is not None)

    def program(self, name: str) -> Program:
        return self.programs[name]

    def has_program(self, name: str) -> bool:
        return name in self.programs

    def event(self, name: str) -> str:
        return self.events.get(name, name)


DEFAULT_EVENTS = {
    "ready": "ready",
    "account_update": "account_update",
    "position_update": "position_update",
    "reconnect": "reconnect",
    "not_ready": "not_ready",
    "subscriber_removed": "subscriber_removed",
    "subscriber_dropped": "subscriber_dropped",
}


class _Strict(dict[str, Any]):
    def __init__(self, values: Mapping[str, Any], program: str) -> None:
        super().__init__(values)
        self._program = program

    def __missing__(self, key: str) -> Any:
        raise ManifestError(f"{self._program}: placeholder {{{key}}} has no value in this test")


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ManifestError(f"{where} must be a list of strings")
    return tuple(raw)


def _program(name: str, raw: Any, root: Path) -> Program:
    where = f"programs.{name}"
    if not isinstance(raw, dict):
        raise ManifestError(f"missing table [{where}]")
    if "command" not in raw:
        raise ManifestError(f"{where}: missing key 'command'")
    command = _strings(raw["command"], f"{where}.command")
    if not command:
        raise ManifestError(f"{where}.command is empty")
    default_ready = {"exchange_connector": "grpc-health", "client_driver": DRIVER_READY}
    ready = str(raw.get("ready", default_ready.get(name, "http:/health")))
    if name in OPTIONAL_PROGRAMS:
        if ready != DRIVER_READY:
            raise ManifestError(f"{where}.ready must be {DRIVER_READY!r} (the driver's `ready` event)")
    elif ready.split(":", 1)[0] not in READINESS:
        raise ManifestError(f"{where}.ready {ready!r} is not one of grpc-health, http:<path>, log:<event>")
    program = Program(
        name=name,
        command=command,
        ready=ready,
        config=raw.get("config"),
        tls_args=_strings(raw.get("tls_args", []), f"{where}.tls_args"),
        token_args=_strings(raw.get("token_args", []), f"{where}.token_args"),
        health_command=_strings(raw.get("health_command", []), f"{where}.health_command"),
        env={str(k): str(v) for k, v in dict(raw.get("env", {})).items()},
        stop_timeout_s=float(raw.get("stop_timeout_s", 10.0)),
    )
    texts = [*program.command, *program.tls_args, *program.token_args, *program.health_command]
    texts += [program.config or "", *program.env.values()]
    for text in texts:
        unknown = _placeholders(text) - PLACEHOLDERS
        if unknown:
            raise ManifestError(f"{where}: unknown placeholder {{{sorted(unknown)[0]}}} in {text!r}")
    executable = command[0]
    if "{" not in executable:
        resolved = root / executable if "/" in executable else None
        if not (shutil.which(executable) or (resolved and resolved.exists())):
            raise ManifestError(f"{where}: command not found: {executable}")
    return program


def _compose(raw: Any, root: Path) -> Compose | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError("[compose] must be a table")
    for key in ("file", "http_port_env"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ManifestError(f"compose: missing key {key!r} (a non-empty string)")
    # checked when §5.2 runs: an installed suite carries the reference's manifest, not its build context
    file = (root / raw["file"]).resolve()
    services = {name: name for name in PROGRAMS}
    given = raw.get("services", {})
    if not isinstance(given, dict) or not all(isinstance(v, str) and v for v in given.values()):
        raise ManifestError("compose.services maps program names to service names (strings)")
    unknown = set(given) - set(PROGRAMS)
    if unknown:
        raise ManifestError(
            f"compose.services: unknown program {sorted(unknown)[0]!r} (known: {', '.join(PROGRAMS)})"
        )
    services.update({str(k): str(v) for k, v in given.items()})
    return Compose(file, services, str(raw["http_port_env"]))


def load_manifest(path: Path) -> Manifest:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None
    if "name" not in raw:
        raise ManifestError(f"{path}: missing key 'name'")
    capabilities = frozenset(_strings(raw.get("capabilities", []), "capabilities"))
    unknown_caps = capabilities - CAPABILITIES
    if unknown_caps:
        raise ManifestError(
            f"{path}: unknown capability {sorted(unknown_caps)[0]!r} (known: {', '.join(sorted(CAPABILITIES))})"
        )
    programs_raw = raw.get("programs")
    if not isinstance(programs_raw, dict):
        raise ManifestError(f"{path}: missing table [programs]")
    known = (*PROGRAMS, *OPTIONAL_PROGRAMS)
    unknown_programs = set(programs_raw) - set(known)
    if unknown_programs:
        raise ManifestError(
            f"{path}: unknown program {sorted(unknown_programs)[0]!r} (known: {', '.join(known)})"
        )
    root = path.resolve().parent
    programs = {name: _program(name, programs_raw.get(name), root) for name in PROGRAMS}
    for name, capability in OPTIONAL_PROGRAMS.items():
        if name in programs_raw:
            programs[name] = _program(name, programs_raw[name], root)
        elif capability in capabilities:
            raise ManifestError(f"{path}: capability {capability!r} needs a [programs.{name}] table")
    known_failures = raw.get("known_failures", {})
    if not isinstance(known_failures, dict) or not all(
        isinstance(v, str) and v for v in known_failures.values()
    ):
        raise ManifestError(f"{path}: [known_failures] maps scenario IDs to a non-empty reason")
    return Manifest(
        name=str(raw["name"]),
        path=path.resolve(),
        digest=hashlib.sha256(data).hexdigest(),
        programs=programs,
        capabilities=capabilities,
        events={**DEFAULT_EVENTS, **{str(k): str(v) for k, v in dict(raw.get("events", {})).items()}},
        known_failures={str(k): v for k, v in known_failures.items()},
        description=str(raw.get("description", "")),
        compose=_compose(raw.get("compose"), root),
    )
