"""Configuration files of the client programs (market_maker, live_server): YAML checked by pydantic.

Every problem becomes one ConfigError line naming the file, the key and the value, e.g.
``config error in mm.yaml: key 'exchange_grpc_address': field required``. The programs print
it and exit with code 2.

Any key can also come from the environment, which wins over the file: the program's prefix
plus the key path in upper snake case, e.g. MARKET_MAKER_EXCHANGE_GRPC_ADDRESS,
LIVE_SERVER_LISTEN, LIVE_SERVER_TLS_CA_FILE, MARKET_MAKER_LOG_LEVEL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from implementation.client_library.address import check_address

MARKET_MAKER_ENV_PREFIX = "MARKET_MAKER_"
LIVE_SERVER_ENV_PREFIX = "LIVE_SERVER_"
CONFIG_ERROR_EXIT_CODE = 2

_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})$")


class ConfigError(ValueError):
    """The configuration cannot be used; str() is one line naming the file, key and value."""


def split_host_port(value: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError saying what is wrong."""
    match = _HOST_PORT.match(value)
    if not match:
        raise ValueError(f"{value!r} is not host:port (e.g. '127.0.0.1:50051' or '[::1]:50051')")
    port = int(match.group("port"))
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r} has port {port}, expected 0-65535")
    return match.group("ipv6") or match.group("host"), port


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class TlsSettings(_Strict):
    """Server verification (ca_file) and, for mutual TLS, the client's own certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        # Relative paths are relative to the config file, so a config folder can be moved whole.
        base = (info.context or {}).get("base")
        if base is not None and not value.is_absolute():
            value = Path(base) / value
        if not value.is_file():
            raise ValueError(f"file not found: {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class LogSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    # Per-update lines: "every" logs each one; "sampled" at most one per kind per update_interval_s
    # (each line counts the updates it stands for), so a busy feed cannot fill the disk.
    updates: Literal["every", "sampled"] = "sampled"
    update_interval_s: float = Field(default=1.0, gt=0, le=3600)

    @field_validator("level", "format", "updates", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class ClientSettings(_Strict):
    """What both client programs need to reach the connector."""

    exchange_grpc_address: str
    tls: TlsSettings | None = None
    token: str | None = Field(default=None, min_length=1)
    # A file holding the token (kept out of `ps` and out of the config itself); relative to the config.
    token_file: Path | None = None
    log: LogSettings = LogSettings()
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    call_timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("exchange_grpc_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base = (info.context or {}).get("base")
        if base is not None and not value.is_absolute():
            value = Path(base) / value
        read_token_file(value)
        return value

    @model_validator(mode="after")
    def _one_token(self) -> ClientSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self

    @property
    def bearer_token(self) -> str | None:
        """The token from `token` or `token_file`, or None."""
        return read_token_file(self.token_file) if self.token_file is not None else self.token


class MarketMakerConfig(ClientSettings):
    current_exchange: Literal["remote"]
    # Where the program writes its heartbeat for `market_maker health` (optional).
    health_file: Path | None = None


class LiveServerConfig(ClientSettings):
    exchange_type: Literal["remote"]
    listen: str = "127.0.0.1:8080"
    ws_queue_size: int = Field(default=256, ge=1, le=100_000)
    # A connection that has not sent a whole request head this long after it opened is closed.
    http_header_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Open HTTP and WebSocket connections; past it, new requests get 503 at once.
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    # Larger inbound WebSocket messages close the socket with 1009 (message too big).
    ws_max_message_bytes: int = Field(default=65_536, ge=1_024, le=1_048_576)
    # Host names the Host header may name (DNS rebinding guard); None: loopback and the listen host.
    allowed_hosts: tuple[str, ...] | None = None
    # Origins allowed to open /ws ("scheme://host[:port]"); None: those on an allowed host; "*": any.
    allowed_origins: tuple[str, ...] | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]


ConfigT = TypeVar("ConfigT", bound=ClientSettings)
SHARED_TOKEN_ENV = "OPENSQT_TOKEN"  # read by all three programs when no other token is given


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace removed); ValueError if unreadable or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"cannot read token file {str(path)!r}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not token:
        raise ValueError(f"token file {str(path)!r} is empty")
    return token


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError for unreadable or malformed files."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config error in {path}: cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config error in {path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error in {path}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config error in {path}: expected a mapping of keys at the top, got {_kind(data)}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        problem += f" ({context} at line {context_mark.line + 1})"
    if mark is not None:
        return f"malformed YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"malformed YAML: {problem}"


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def env_overrides(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Values from PREFIX_KEY (and PREFIX_SECTION_KEY for nested sections) variables."""
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = _nested_model(annotation)
        if nested is not None:
            section = env_overrides(nested, f"{prefix}{name.upper()}_", environ)
            if section:
                found[name] = section
        elif f"{prefix}{name.upper()}" in environ:
            found[name] = environ[f"{prefix}{name.upper()}"]
    return found


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", (annotation,))
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_errors(error: ValidationError) -> str:
    """pydantic's errors as "key 'a.b': what is wrong (got 'value')", joined with '; '."""
    parts: list[str] = []
    for item in error.errors(include_url=False):
        key = ".".join(str(part) for part in item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
            continue
        message = str(item["msg"])
        message = message.removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        if kind == "missing":
            parts.append(f"key '{key}': field required")
        elif kind.startswith("literal") or kind.endswith("_type") or kind.endswith("_parsing"):
            parts.append(f"key '{key}': {message}, got {_shown(item.get('input'))}")
        elif key:
            parts.append(f"key '{key}': {message}")
        else:
            parts.append(message)
    return "; ".join(parts)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_config(
    model: type[ConfigT],
    path: Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ConfigT:
    """The program's settings from the YAML file (if any), the environment and then `overrides`
    (command-line options, nested like the file); ConfigError if unusable."""
    where = str(path) if path is not None else "environment"
    data = read_yaml(path) if path is not None else {}
    environ = os.environ if environ is None else environ
    data = _merge(data, env_overrides(model, env_prefix, environ))
    data = _merge(data, dict(overrides or {}))
    if data.get("token") is None and data.get("token_file") is None and environ.get(SHARED_TOKEN_ENV):
        data["token"] = environ[SHARED_TOKEN_ENV]
    try:
        return model.model_validate(data, context={"base": path.parent if path is not None else None})
    except ValidationError as exc:
        raise ConfigError(f"config error in {where}: {describe_errors(exc)}") from None
