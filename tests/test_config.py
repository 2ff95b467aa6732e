"""The client programs' config files: every problem is one line naming the file, the key and the value."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from implementation.config import (
    LIVE_SERVER_ENV_PREFIX,
    MARKET_MAKER_ENV_PREFIX,
    ConfigError,
    LiveServerConfig,
    MarketMakerConfig,
    load_config,
    split_host_port,
)

pytestmark = pytest.mark.timeout(30)

MARKET_MAKER_OK = """
current_exchange: remote
exchange_grpc_address: "127.0.0.1:50051"
"""
LIVE_SERVER_OK = """
exchange_type: remote
exchange_grpc_address: "127.0.0.1:50051"
listen: "127.0.0.1:8081"
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def market_maker(path: Path, environ: dict[str, str] | None = None) -> MarketMakerConfig:
    return load_config(MarketMakerConfig, path, env_prefix=MARKET_MAKER_ENV_PREFIX, environ=environ or {})


def live_server(path: Path | None, environ: dict[str, str] | None = None) -> LiveServerConfig:
    return load_config(LiveServerConfig, path, env_prefix=LIVE_SERVER_ENV_PREFIX, environ=environ or {})


def error_of(path: Path, loader: Callable[[Path], object] = market_maker) -> str:
    with pytest.raises(ConfigError) as caught:
        loader(path)
    return str(caught.value)


def test_minimal_market_maker_config_has_defaults(tmp_path: Path) -> None:
    config = market_maker(write(tmp_path, MARKET_MAKER_OK))
    assert config.exchange_grpc_address == "127.0.0.1:50051", f"expected the address, got {config}"
    assert (config.log.level, config.log.format) == ("info", "json"), f"expected info/json, got {config.log}"
    assert config.tls is None and config.token is None, f"expected no TLS/token, got {config}"


def test_full_live_server_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    path = write(
        tmp_path,
        LIVE_SERVER_OK + "tls: {ca_file: ca.pem}\ntoken: secret\nlog: {level: DEBUG, format: text}\n",
    )
    config = live_server(path)
    assert config.tls is not None and config.tls.ca_file == ca, (
        f"expected ca.pem next to the config, got {config.tls}"
    )
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8081), f"got {config.listen}"
    assert config.token == "secret" and config.log.level == "debug", f"got {config}"


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'current_exchange: remote\nexchange_grpc_address: ["127.0.0.1:1"\n')
    message = error_of(path)
    assert message.startswith(f"config error in {path}: malformed YAML at line 3"), f"got {message!r}"


def test_indentation_error_names_the_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "current_exchange: remote\n  exchange_grpc_address: x\n"))
    assert "malformed YAML at line 2" in message, f"expected line 2 named, got {message!r}"


def test_missing_key_is_named(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "current_exchange: remote\n"))
    assert "key 'exchange_grpc_address': field required" in message, f"got {message!r}"


def test_empty_file_names_every_missing_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, ""))
    assert "key 'current_exchange': field required" in message, f"got {message!r}"
    assert "key 'exchange_grpc_address': field required" in message, f"got {message!r}"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MARKET_MAKER_OK + "exchange_grpc_adress: typo\n"))
    assert "unknown key 'exchange_grpc_adress'" in message, f"got {message!r}"


def test_unknown_nested_key_is_named_with_its_section(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MARKET_MAKER_OK + "log: {level: info, colour: true}\n"))
    assert "unknown key 'log.colour'" in message, f"got {message!r}"


@pytest.mark.parametrize(
    ("extra", "key", "shown"),
    [
        ("current_exchange: local\nexchange_grpc_address: '127.0.0.1:1'\n", "current_exchange", "'local'"),
        (
            "current_exchange: remote\nexchange_grpc_address: localhost\n",
            "exchange_grpc_address",
            "'localhost'",
        ),
        (
            "current_exchange: remote\nexchange_grpc_address: '127.0.0.1:99999'\n",
            "exchange_grpc_address",
            "99999",
        ),
        (MARKET_MAKER_OK + "log: {level: loud}\n", "log.level", "'loud'"),
        (MARKET_MAKER_OK + "connect_timeout: soon\n", "connect_timeout", "'soon'"),
        (MARKET_MAKER_OK + "tls: {ca_file: missing.pem}\n", "tls.ca_file", "missing.pem"),
        (MARKET_MAKER_OK + "token: ''\n", "token", "at least 1"),
    ],
)
def test_bad_value_names_key_and_value(tmp_path: Path, extra: str, key: str, shown: str) -> None:
    message = error_of(write(tmp_path, extra))
    assert f"key '{key}'" in message and shown in message, (
        f"expected key {key!r} and {shown} named, got {message!r}"
    )


def test_tls_cert_without_key_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    message = error_of(write(tmp_path, MARKET_MAKER_OK + "tls: {cert_file: cert.pem}\n"))
    assert "cert_file and key_file must be given together" in message, f"got {message!r}"


def test_bad_listen_address(tmp_path: Path) -> None:
    path = write(tmp_path, LIVE_SERVER_OK.replace('"127.0.0.1:8081"', '"8081"'))
    message = error_of(path, live_server)
    assert "key 'listen'" in message and "'8081' is not host:port" in message, f"got {message!r}"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "- current_exchange\n"))
    assert "expected a mapping of keys at the top, got a list" in message, f"got {message!r}"


def test_unreadable_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "absent.yaml")
    assert "cannot read file" in message and "absent.yaml" in message, f"got {message!r}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {"MARKET_MAKER_EXCHANGE_GRPC_ADDRESS": "10.0.0.1:6000", "MARKET_MAKER_LOG_LEVEL": "warning"}
    config = market_maker(write(tmp_path, MARKET_MAKER_OK), environ)
    assert config.exchange_grpc_address == "10.0.0.1:6000", f"expected the env address, got {config}"
    assert config.log.level == "warning", f"expected the env log level, got {config.log}"


def test_environment_alone_is_enough() -> None:
    environ = {
        "LIVE_SERVER_EXCHANGE_TYPE": "remote",
        "LIVE_SERVER_EXCHANGE_GRPC_ADDRESS": "connector:50051",
        "LIVE_SERVER_LISTEN": "0.0.0.0:8080",
    }
    config = live_server(None, environ)
    assert (config.exchange_grpc_address, config.listen) == ("connector:50051", "0.0.0.0:8080"), (
        f"got {config}"
    )


def test_environment_errors_name_the_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        live_server(None, {"LIVE_SERVER_EXCHANGE_TYPE": "remote"})
    assert str(caught.value).startswith("config error in environment:"), f"got {caught.value}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8080", ("::1", 8080)), ("my_host:0", ("my_host", 0))],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected, f"expected {expected}, got {split_host_port(text)}"


@pytest.mark.parametrize("program", ["implementation.market_maker", "implementation.live_server"])
def test_programs_exit_2_naming_the_key(tmp_path: Path, program: str) -> None:
    path = write(tmp_path, "current_exchange: remote\nexchange_type: remote\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", program, "--config", str(path)], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}: {result.stderr}"
    assert "unknown key 'bogus'" in result.stderr, f"expected the key named on stderr, got {result.stderr!r}"
    assert len(result.stderr.strip().splitlines()) == 1, f"expected one line, got {result.stderr!r}"


# ------------------------------------------------------------------ tokens kept out of `ps`


def test_token_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n", encoding="utf-8")
    config = market_maker(write(tmp_path, MARKET_MAKER_OK + "token_file: token\n"))
    assert config.bearer_token == "s3cret", f"expected the file's token without its newline, got {config}"


def test_empty_or_missing_token_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    assert "token file" in error_of(write(tmp_path, MARKET_MAKER_OK + "token_file: empty\n"))
    assert "cannot read token file" in error_of(write(tmp_path, MARKET_MAKER_OK + "token_file: nowhere\n"))


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("a", encoding="utf-8")
    problem = error_of(write(tmp_path, MARKET_MAKER_OK + "token: b\ntoken_file: token\n"))
    assert "token or token_file, not both" in problem, f"got {problem}"


def test_shared_token_variable_is_the_last_resort(tmp_path: Path) -> None:
    path = write(tmp_path, LIVE_SERVER_OK)
    assert live_server(path, {"OPENSQT_TOKEN": "shared"}).bearer_token == "shared"
    own = live_server(path, {"OPENSQT_TOKEN": "shared", "LIVE_SERVER_TOKEN": "own"})
    assert own.bearer_token == "own", f"expected the program's own variable to win, got {own.bearer_token}"
    assert live_server(path).bearer_token is None


def test_live_server_hardening_defaults(tmp_path: Path) -> None:
    config = live_server(write(tmp_path, LIVE_SERVER_OK))
    assert (config.http_header_timeout_s, config.max_connections, config.ws_max_message_bytes) == (
        5.0,
        1000,
        65_536,
    ), f"got {config}"
    assert config.allowed_hosts is None and config.allowed_origins is None, f"got {config}"
    assert (config.log.updates, config.log.update_interval_s) == ("sampled", 1.0), f"got {config.log}"
    listed = live_server(write(tmp_path, LIVE_SERVER_OK + "allowed_hosts: [dash.example]\n"))
    assert listed.allowed_hosts == ("dash.example",), f"got {listed.allowed_hosts}"


def test_websocket_limit_above_the_rule_is_refused(tmp_path: Path) -> None:
    problem = error_of(write(tmp_path, LIVE_SERVER_OK + "ws_max_message_bytes: 2000000\n"), live_server)
    assert "ws_max_message_bytes" in problem, f"got {problem}"
