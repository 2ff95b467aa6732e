"""§5.1 program input: what the client programs do with bad configuration and bad requests.

- 5.1.1.x4: market_maker and live_server, given malformed YAML, a missing key, an unknown key or a
  bad value, exit with code 2 and print one line that names the key (for malformed YAML: the file).
  The configs are the manifest's own config template, rendered, then broken in one place.
- 5.1.1.x5: live_server answers an unknown API path with a 404 JSON error and a bad ?symbol= with a
  4xx JSON error naming the parameter; and a WebSocket client that never reads does not stall
  another one, which keeps receiving every update.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from harness.sut.launch import ProgramLauncher
from harness.sut.manifest import Manifest
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.e2e.conftest import (
    LIVE_SERVER,
    MARKET_MAKER,
    Answer,
    Stack,
    account_update,
    contract_fields,
    http_get,
    poll_http,
    position_update,
)

BAD_CONFIG, BAD_REQUEST = "5.1.1.x4", "5.1.1.x5"
EXIT_WAIT_S = 20.0
CONFIG_ERROR_EXIT_CODE = 2
# The key naming the program's exchange kind in the spec's configs (§5.1: "current_exchange: remote").
KIND_KEY = {MARKET_MAKER: "current_exchange", LIVE_SERVER: "exchange_type"}
ADDRESS_KEY = "exchange_grpc_address"
MALFORMED_WORDS = ("yaml", "parse", "syntax", "malformed", "invalid", "scan")

pytestmark = pytest.mark.e2e

# ------------------------------------------------------------------------------------------ 5.1.1.x4

Config = dict[str, Any]
TYPO_KEY = "exchange_grpc_adress"
BROKEN_CASES = ("missing_key", "unknown_key", "bad_value", "bad_address")


def _broken(case: str, program: str, config: Config) -> tuple[Config, str]:
    """`config` broken in one place, and the key the error message must name."""
    if case == "missing_key":
        return {key: value for key, value in config.items() if key != ADDRESS_KEY}, ADDRESS_KEY
    if case == "unknown_key":  # a typo of a real key
        return {**config, TYPO_KEY: config[ADDRESS_KEY]}, TYPO_KEY
    if case == "bad_value":  # "native" was the exchange kind before the connector existed
        return {**config, KIND_KEY[program]: "native"}, KIND_KEY[program]
    return {**config, ADDRESS_KEY: "127.0.0.1:not-a-port"}, ADDRESS_KEY


def _rendered_config(sut: Manifest, name: str, free_port: Callable[[], int], folder: Path) -> str:
    program = sut.program(name)
    if program.config is None:
        pytest.fail(f"expected the manifest to give {name} a config template, got none")
    values = {"connector": f"127.0.0.1:{free_port()}", "http_port": free_port(), "workdir": str(folder)}
    return program.render(program.config, {**values, "root": str(sut.path.parent), "python": sys.executable})


def _run_with_config(launcher: ProgramLauncher, name: str, path: Path) -> tuple[int, list[str]]:
    """Start `name` with config file `path`; its exit code and the non-empty lines it printed."""
    program = launcher.start(name, {"config": str(path)}, wait_ready=False)
    try:
        code = program.wait(EXIT_WAIT_S)
    except TimeoutError:
        pytest.fail(
            f"expected {name} to exit with code {CONFIG_ERROR_EXIT_CODE} on the bad config "
            f"{path.name}, got still running after {EXIT_WAIT_S:.0f} s; {program.tail()}"
        )
    return code, [line for line in program.log_lines() + program.output_lines() if line.strip()]


def _assert_rejected(name: str, case: str, code: int, lines: list[str], names: str) -> None:
    shown = "\n".join(lines[:10]) or "(nothing)"
    assert code == CONFIG_ERROR_EXIT_CODE, (
        f"{name}, {case}: expected exit code {CONFIG_ERROR_EXIT_CODE}, got {code}; it printed:\n{shown}"
    )
    assert len(lines) == 1, f"{name}, {case}: expected a one-line message, got {len(lines)} lines:\n{shown}"
    assert names in lines[0], f"{name}, {case}: expected the message to name {names!r}, got {lines[0]!r}"


@pytest.mark.scenario(BAD_CONFIG)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", BROKEN_CASES)
@pytest.mark.parametrize("name", [MARKET_MAKER, LIVE_SERVER])
def test_bad_config_key_exits_2_naming_the_key(
    name: str,
    case: str,
    sut: Manifest,
    launcher: ProgramLauncher,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(_rendered_config(sut, name, free_port, tmp_path))
    assert isinstance(config, dict) and ADDRESS_KEY in config and KIND_KEY[name] in config, (
        f"expected {name}'s config template to hold {ADDRESS_KEY!r} and {KIND_KEY[name]!r} "
        f"(the spec's keys), got {config!r}"
    )
    broken, names = _broken(case, name, config)
    path = tmp_path / f"{name}-{case}.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
    code, lines = _run_with_config(launcher, name, path)
    _assert_rejected(name, case, code, lines, names)


@pytest.mark.scenario(BAD_CONFIG)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [MARKET_MAKER, LIVE_SERVER])
def test_malformed_yaml_exits_2_naming_the_file(
    name: str, sut: Manifest, launcher: ProgramLauncher, free_port: Callable[[], int], tmp_path: Path
) -> None:
    path = tmp_path / f"{name}-malformed.yaml"
    path.write_text(
        _rendered_config(sut, name, free_port, tmp_path) + "\nlog: {level: info\n", encoding="utf-8"
    )
    code, lines = _run_with_config(launcher, name, path)
    _assert_rejected(name, "malformed YAML", code, lines, path.name)
    rest = lines[0].replace(str(path), "").replace(path.name, "").lower()
    assert any(word in rest for word in MALFORMED_WORDS), (
        f"{name}, malformed YAML: expected the message to say the file cannot be parsed, got {lines[0]!r}"
    )


# ------------------------------------------------------------------------------------------ 5.1.1.x5


def _json_error(answer: Answer, scenario: str, what: str) -> Any:
    body = answer.json()
    assert "json" in answer.content_type and isinstance(body, dict) and body, (
        f"{what}: expected a JSON object error body, got {answer.content_type!r}: {answer}"
    )
    return body


@pytest.mark.scenario(BAD_REQUEST)
@pytest.mark.timeout(60)
def test_unknown_api_path_gets_404_json(live_stack: Stack) -> None:
    path = "/api/no-such-thing"
    with httpx.Client(trust_env=False) as client:
        answer = http_get(client, f"{live_stack.base_url}{path}")
    assert answer.status == 404, f"GET {path}: expected 404, got {answer}"
    body = _json_error(answer, BAD_REQUEST, f"GET {path}")
    text = json.dumps(body).lower()
    assert path in text or "not found" in text, (
        f"GET {path}: expected the error to say the path is unknown, got {body}"
    )


@pytest.mark.scenario(BAD_REQUEST)
@pytest.mark.timeout(60)
def test_bad_symbol_gets_4xx_json_naming_the_parameter(live_stack: Stack) -> None:
    with httpx.Client(trust_env=False) as client:
        for symbol in ("BTC<script>", "btc usdt", "X" * 300):
            url = httpx.URL(f"{live_stack.base_url}/api/positions", params={"symbol": symbol})
            answer = http_get(client, str(url))
            what = f"GET /api/positions?symbol={symbol[:20]!r}{'...' if len(symbol) > 20 else ''}"
            assert answer.status is not None and 400 <= answer.status < 500, (
                f"{what}: expected a 4xx error, got {answer}"
            )
            body = _json_error(answer, BAD_REQUEST, what)
            assert "symbol" in json.dumps(body).lower(), (
                f"{what}: expected the error to name the 'symbol' parameter, got {body}"
            )


def _flood_bytes() -> int:
    """More than the kernel lets a server buffer for one connection (tcp_wmem's maximum), so a
    client that never reads certainly stops taking data well before the flood ends."""
    try:
        largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        largest = 4 * 1024 * 1024
    return largest + 1024 * 1024


def _silent_websocket(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads a byte; its small
    receive buffer (set before connecting) keeps its window small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5.0)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = sock.recv(1)
            if not chunk:
                break
            head += chunk
    except BaseException:
        sock.close()
        raise
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 101 " not in f"{status} ":
        sock.close()
        pytest.fail(f"expected a WebSocket handshake (101) on /ws, got {status!r}")
    return sock


FLOOD_DIGITS = "7" * 60  # long decimal strings: each update is a few hundred bytes, the flood stays short
FLOOD_BASE = 50000
# The flood is paced: a burst of more than 1,024 updates at once would have the connector drop
# live_server as a slow subscriber (rule C13), and the flood would never reach the WebSocket clients.
FLOOD_CHUNK, FLOOD_CHUNK_EVERY_S = 100, 0.05  # 2,000 updates a second
FEED_WAIT_S = 30.0


def _flood_position(index: int) -> pb.Position:
    position, _ = position_update(0)
    position.size, position.entry_price = f"0.{FLOOD_DIGITS}", f"40001.{FLOOD_DIGITS}"
    position.unrealized_pnl, position.liquidation = f"925.{FLOOD_DIGITS}", f"36500.{FLOOD_DIGITS}"
    position.mark_price = f"{FLOOD_BASE + index}.{FLOOD_DIGITS}"
    return position


def _read_until(reader: ClientConnection, found: Callable[[str], bool], timeout: float) -> tuple[bool, int]:
    """Read messages until one satisfies `found`: (found it, messages read)."""
    deadline = time.monotonic() + timeout
    read = 0
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            raw = reader.recv(timeout=remaining)
        except (TimeoutError, ConnectionClosed):
            break
        read += 1
        if found(raw if isinstance(raw, str) else raw.decode("utf-8", "replace")):
            return True, read
    return False, read


@pytest.mark.scenario(BAD_REQUEST)
@pytest.mark.requires("websocket")
@pytest.mark.timeout(120)
def test_websocket_client_that_never_reads_does_not_stall_another(live_stack: Stack) -> None:
    stack = live_stack
    fields, _ = contract_fields(_flood_position(0))
    count = _flood_bytes() // len(json.dumps({"type": "position", "data": fields})) + 1
    last_mark = f'"{FLOOD_BASE + count - 1}.{FLOOD_DIGITS}"'
    with (
        contextlib.closing(_silent_websocket(stack.http_port)),
        ws_connect(stack.ws_url, open_timeout=5, close_timeout=2, max_size=None) as reader,
    ):
        reader.recv(timeout=10)  # the first message: the feed is live for this client

        def flood() -> None:
            for index in range(count):
                stack.mock.trigger_position_update(_flood_position(index))
                if index % FLOOD_CHUNK == FLOOD_CHUNK - 1:
                    time.sleep(FLOOD_CHUNK_EVERY_S)

        # the reading client reads while the flood is sent, as a browser would
        flooding = threading.Thread(target=flood, name="ws-flood", daemon=True)
        began = time.monotonic()
        flooding.start()
        try:
            got_last, read = _read_until(reader, lambda text: last_mark in text, FEED_WAIT_S)
        finally:
            flooding.join()
        assert got_last, (
            f"expected a reading WebSocket client to receive the last of {count} position "
            f"updates within {FEED_WAIT_S:.0f} s while another client never reads, got {read} message(s) "
            "and then no more (stalled?)"
        )
        flood_s = time.monotonic() - began

        account, sent = account_update(1)  # and it keeps receiving after the flood
        stack.mock.trigger_account_update(account)
        got_after, _ = _read_until(reader, lambda text: sent.find(json.loads(text)) is not None, 10.0)
        assert got_after, (
            f"expected the reading client to receive the {sent.describe()} after the "
            f"flood ({count} updates in {flood_s:.1f} s), got none within 10 s"
        )
    ok, answer = poll_http(f"{stack.base_url}/health", lambda answer: answer.status == 200, 10.0)
    assert ok, f"expected live_server healthy after the flood, got {answer}"
