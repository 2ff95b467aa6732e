"""Tokens kept out of `ps`: every program takes its bearer token from a file or the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from implementation.clients import add_connection_options, connection_overrides
from implementation.config import MARKET_MAKER_ENV_PREFIX, MarketMakerConfig, load_config
from implementation.connector.cli import ServeSettings, UsageError, parse

pytestmark = pytest.mark.timeout(30)
CONFIG = 'current_exchange: remote\nexchange_grpc_address: "127.0.0.1:50051"\n'


def connector_token(argv: list[str], env: dict[str, str] | None = None) -> str | None:
    settings = parse(["serve", "--exchange", "sim", *argv], env or {})
    assert isinstance(settings, ServeSettings)
    return settings.token


def test_connector_reads_token_file_and_shared_variable(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n", encoding="utf-8")
    assert connector_token(["--token-file", str(tmp_path / "token")]) == "from-file"
    assert connector_token([], {"OPENSQT_TOKEN": "shared"}) == "shared"
    assert connector_token(["--token", "flag"], {"OPENSQT_TOKEN": "shared"}) == "flag"
    assert connector_token([]) is None


def test_connector_refuses_two_tokens_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("", encoding="utf-8")
    with pytest.raises(UsageError, match="not both"):
        connector_token(["--token", "a", "--token-file", str(tmp_path / "empty")])
    with pytest.raises(UsageError, match=r"--token-file: token file .* is empty"):
        connector_token(["--token-file", str(tmp_path / "empty")])


def client_token(tmp_path: Path, config: str, argv: list[str]) -> str | None:
    path = tmp_path / "config.yaml"
    path.write_text(config, encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_connection_options(parser)
    overrides = connection_overrides(parser.parse_args(argv))
    settings = load_config(
        MarketMakerConfig, path, env_prefix=MARKET_MAKER_ENV_PREFIX, environ={}, overrides=overrides
    )
    return settings.bearer_token


def test_client_command_line_token_file_replaces_the_config_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file", encoding="utf-8")
    with_token = CONFIG + "token: in-config\n"
    assert client_token(tmp_path, with_token, ["--token-file", str(tmp_path / "token")]) == "from-file"
    assert client_token(tmp_path, CONFIG + "token_file: token\n", ["--token", "flag"]) == "flag"
    assert client_token(tmp_path, with_token, []) == "in-config"
