"""Interop: a client on Node's grpc-js, a gRPC stack that shares no code with Python's grpcio,
receives the connector's data unchanged.

interop/node/client/client.js runs as a subprocess against the SUT's exchange_connector (fed by the
mock exchange) and prints every message it receives as a JSON line; the test triggers updates in
the mock exchange and compares what the client printed with what was sent, field by field.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.connector import ConnectorFactory
from harness.tls import TlsMaterial
from opensqt.exchange.v1 import exchange_pb2 as pb

INTEROP_DIR = Path(__file__).resolve().parents[2] / "interop" / "node" / "client"
INSTALL_STAMP = INTEROP_DIR / "node_modules" / ".installed-package-lock.sha256"
NPM_CI = ("ci", "--no-audit", "--no-fund", "--ignore-scripts")
NPM_TIMEOUT_S = 100.0
STACK_LINE = re.compile(r"^npm error\s+at ")
UPDATES = 3  # updates each stream must deliver
DELIVERY_TIMEOUT_S = 20.0
# An update sent before the connector has registered the client's subscription reaches nobody, so
# updates go out slowly until the first one arrives, then briskly.
SLOW_INTERVAL_S = 0.3
BRISK_INTERVAL_S = 0.05
TOKEN = "interop-token"

Event = dict[str, Any]


# ---------------------------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class NodeRuntime:
    node: str
    client_js: Path


@pytest.fixture(scope="session")
def node_runtime() -> NodeRuntime:
    """node, with interop/node/client's pinned npm dependencies installed (once per lock file)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("environment: the Node.js interop client needs node and npm on PATH")
    if not (INTEROP_DIR / "package-lock.json").is_file():
        pytest.skip(
            f"environment: the Node.js interop client ({INTEROP_DIR}) is only in a checkout of the suite"
        )
    _install_dependencies(npm)
    return NodeRuntime(node, INTEROP_DIR / "client.js")


def _install_dependencies(npm: str) -> None:
    wanted = hashlib.sha256((INTEROP_DIR / "package-lock.json").read_bytes()).hexdigest()
    lock_name = "exchange-interop-npm-" + hashlib.sha256(str(INTEROP_DIR).encode()).hexdigest()[:12] + ".lock"
    with (Path(tempfile.gettempdir()) / lock_name).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel workers share one folder: one installs, the rest wait
        if INSTALL_STAMP.is_file() and INSTALL_STAMP.read_text().strip() == wanted:
            return
        started = time.monotonic()
        try:
            done = subprocess.run(
                [npm, *NPM_CI], cwd=INTEROP_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                env={**os.environ, "npm_config_update_notifier": "false"}, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"`npm {' '.join(NPM_CI)}` in {INTEROP_DIR} did not finish within {NPM_TIMEOUT_S:.0f} s"
            )
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            cause = [line for line in lines if not STACK_LINE.match(line)][:12]  # npm's own stack says little
            output = "\n".join(cause)
            pytest.fail(
                f"`npm {' '.join(NPM_CI)}` in {INTEROP_DIR} failed with exit code {done.returncode} "
                f"(it needs the npm registry):\n{output}"
            )
        INSTALL_STAMP.write_text(wanted + "\n")
        print(f"[interop] npm ci took {time.monotonic() - started:.1f} s")


class NodeClient:
    """client.js running as a subprocess; its stdout (JSON lines) is read as it appears."""

    def __init__(self, runtime: NodeRuntime, address: str, args: list[str], folder: Path) -> None:
        self._stdout_path = folder / "node-client.stdout"
        self._stderr_path = folder / "node-client.stderr"
        with self._stdout_path.open("wb") as stdout, self._stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [runtime.node, str(runtime.client_js), address, *args],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=INTEROP_DIR,
            )  # fmt: skip
        self._offset = 0
        self._partial = b""
        self.events: list[Event] = []

    def poll(self) -> list[Event]:
        """Every event printed so far."""
        with self._stdout_path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                raise AssertionError(
                    f"the Node client printed a line that is not JSON: {line[:300]!r}"
                ) from None
        return self.events

    def named(self, name: str) -> list[Event]:
        return [event for event in self.poll() if event.get("event") == name]

    def check_running(self, doing: str) -> None:
        """AssertionError naming the client's own error when it has exited before finishing."""
        code = self._process.poll()
        self.poll()
        if code is not None and not self.named("done"):
            raise AssertionError(f"the Node client exited with code {code} {doing}; {self.describe()}")

    def wait_for(self, name: str, timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            found = self.named(name)
            if found:
                return found[0]
            self.check_running(f"before printing a {name!r} line")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"the Node client printed no {name!r} line within {timeout} s; {self.describe()}"
                )
            time.sleep(0.02)

    def finish(self, timeout: float) -> int:
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the Node client still runs {timeout} s after its last update; {self.describe()}"
            ) from None
        self.poll()
        return code

    def describe(self) -> str:
        errors = [event.get("message") for event in self.events if event.get("event") == "error"]
        stderr = self._stderr_path.read_text("utf-8", "replace").strip().splitlines()[-10:]
        shown = (
            f"its error: {errors[0]}"
            if errors
            else f"its last lines: {[e.get('event') for e in self.events][-8:]}"
        )
        return shown + ("; stderr: " + " | ".join(stderr) if stderr else "")

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


@contextmanager
def node_client(runtime: NodeRuntime, address: str, args: list[str], folder: Path) -> Iterator[NodeClient]:
    client = NodeClient(runtime, address, args, folder)
    try:
        yield client
    finally:
        client.close()


def deliver_until_received(client: NodeClient, send: Callable[[int], None], event: str, scenario: str) -> int:
    """Call send(0), send(1), ... until the client printed UPDATES `event` lines; the number sent."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    sent, next_at = 0, 0.0
    while len(client.named(event)) < UPDATES:
        client.check_running(f"after receiving {len(client.named(event))} of {UPDATES} {event} lines")
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(
                f"expected the Node client to receive {UPDATES} updates within {DELIVERY_TIMEOUT_S} s "
                f"of {sent} sent, got {len(client.named(event))}; {client.describe()}"
            )
        if now >= next_at:
            send(sent)
            sent += 1
            next_at = now + (BRISK_INTERVAL_S if client.named(event) else SLOW_INTERVAL_S)
        time.sleep(0.01)
    return sent


# ---------------------------------------------------------------------------------------------- data


def as_node_json(message: Message) -> Event:
    """A message as client.js prints it: proto field names, 64-bit integers as strings."""
    fields: Event = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if isinstance(value, Timestamp):
            has = message.HasField(field.name)
            fields[field.name] = {"seconds": str(value.seconds), "nanos": value.nanos} if has else None
        else:
            fields[field.name] = value
    return fields


def numbered_account(number: int) -> pb.Account:
    """Account update `number`: decimal strings a float would change (trailing zeros, more digits
    than a double holds), identified by total_balance."""
    return pb.Account(
        total_balance=f"{10000 + number}.10",
        available_balance="0.000000000000000001",
        equity="123456789012345678901234567890.50",
        unrealized_pnl=f"-{number}.50",
        margin_used="0",
        margin_level="190.00",
        leverage="10.0",
        updated_at=Timestamp(seconds=1_700_000_000 + number, nanos=123_456_789),
    )


def numbered_position(symbol: str, number: int) -> pb.Position:
    """Position update `number` of `symbol`, identified by mark_price."""
    return pb.Position(
        symbol=symbol, side="LONG" if symbol == "BTCUSDT" else "SHORT", size="0.50",
        entry_price="40000.00", mark_price=f"{41000 + number}.25", leverage="10",
        unrealized_pnl=f"-{number}.000001", liquidation="36000.00",
        margin_type="ISOLATED" if symbol == "BTCUSDT" else "CROSS",
    )  # fmt: skip


def assert_received_in_order(received: list[Event], sent: list[Event], key: str, scenario: str) -> None:
    """The received updates are consecutive sent updates, every field unchanged, in order.

    Updates sent before the client's subscription was registered reach nobody, so the run may
    start anywhere in what was sent; from there on nothing may be lost, added or reordered."""
    starts = [index for index, update in enumerate(sent) if update[key] == received[0][key]]
    assert starts, f"expected the Node client to receive updates the exchange sent, got {received[0]}"
    expected = sent[starts[0] : starts[0] + len(received)]
    assert len(expected) == len(received), (
        f"expected the Node client to receive at most the {len(expected)} updates sent from the first "
        f"one it got, got {len(received)}"
    )
    for position, (want, got) in enumerate(zip(expected, received, strict=True)):
        changed = {name: (want[name], got.get(name)) for name in want if want[name] != got.get(name)}
        assert not changed, (
            f"update {position + 1} received by the Node client differs from what the exchange sent "
            f"(field: (expected, got)): {changed}"
        )


# ---------------------------------------------------------------------------------------------- scenarios


@pytest.mark.integration
@pytest.mark.scenario("4.2.1.a")
@pytest.mark.timeout(150)  # npm ci on the first run, then a few seconds
@pytest.mark.parametrize(
    "transport",
    ["plaintext", pytest.param("tls+token", marks=pytest.mark.requires("tls", "token_auth"))],
)
def test_node_client_receives_account_updates_unchanged(
    transport: str,
    node_runtime: NodeRuntime,
    mock_exchange: MockExchangeServer,
    sync_connectors: ConnectorFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    scenario = "4.2.1.a (grpc-js client)"
    initial = numbered_account(9000)
    positions = [numbered_position("BTCUSDT", 900), numbered_position("ETHUSDT", 900)]
    mock_exchange.set_account(initial)
    mock_exchange.set_positions(positions)
    client_args = ["--account-updates", str(UPDATES), "--position-updates", "0"]
    if transport == "tls+token":
        tls: TlsMaterial = request.getfixturevalue("tls_material")
        connector = sync_connectors.start_sync(tls=tls, token=TOKEN)
        client_args += ["--ca", str(tls.ca_pem), "--token", TOKEN]
    else:
        connector = sync_connectors.start_sync()

    sent: list[pb.Account] = []

    def send(number: int) -> None:
        sent.append(numbered_account(number))
        mock_exchange.trigger_account_update(sent[-1])

    with node_client(node_runtime, connector.address, client_args, tmp_path) as client:
        client.wait_for("subscribing", timeout=20.0)
        deliver_until_received(client, send, "account_update", scenario)
        code = client.finish(timeout=10.0)
        assert code == 0, f"expected the Node client to exit 0, got {code}; {client.describe()}"

        health = client.named("health")[0]
        assert health["status"] == "SERVING", f"expected health SERVING, got {health['status']}"
        account = client.named("account")[0]["account"]
        assert account == as_node_json(initial), (
            f"expected GetAccount to return {as_node_json(initial)}, got {account}"
        )
        listed = client.named("positions")[0]["positions"]
        assert listed == [as_node_json(p) for p in positions], (
            f"expected GetPositions to return both positions unchanged, got {listed}"
        )
        received = [event["account"] for event in client.named("account_update")]
        assert len(received) == UPDATES, f"expected {UPDATES} account updates, got {len(received)}"
        assert_received_in_order(received, [as_node_json(a) for a in sent], "total_balance", scenario)


@pytest.mark.integration
@pytest.mark.scenario("4.2.2.a")
@pytest.mark.timeout(150)  # npm ci on the first run, then a few seconds
def test_node_client_receives_only_its_symbol(
    node_runtime: NodeRuntime,
    mock_exchange: MockExchangeServer,
    sync_connectors: ConnectorFactory,
    tmp_path: Path,
) -> None:
    scenario = "4.2.2.a (grpc-js client)"
    positions = [numbered_position("BTCUSDT", 900), numbered_position("ETHUSDT", 900)]
    mock_exchange.set_positions(positions)
    connector = sync_connectors.start_sync()

    sent: list[pb.Position] = []

    def send(number: int) -> None:
        # ETHUSDT and BTCUSDT alternate, so every BTCUSDT update after the first follows an ETHUSDT one
        sent.append(numbered_position("ETHUSDT" if number % 2 == 0 else "BTCUSDT", number // 2))
        mock_exchange.trigger_position_update(sent[-1])

    args = ["--account-updates", "0", "--symbol", "BTCUSDT", "--position-updates", str(UPDATES)]
    with node_client(node_runtime, connector.address, args, tmp_path) as client:
        client.wait_for("subscribing", timeout=20.0)
        deliver_until_received(client, send, "position_update", scenario)
        code = client.finish(timeout=10.0)
        assert code == 0, f"expected the Node client to exit 0, got {code}; {client.describe()}"

        listed = client.named("positions")[0]["positions"]
        assert listed == [as_node_json(positions[0])], (
            f"expected GetPositions(BTCUSDT) to return only the BTCUSDT position, got {listed}"
        )
        received = [event["position"] for event in client.named("position_update")]
        symbols = sorted({position["symbol"] for position in received})
        assert symbols == ["BTCUSDT"], (
            f"expected only BTCUSDT updates on a stream filtered by BTCUSDT, got symbols {symbols}"
        )
        btc_sent = [as_node_json(p) for p in sent if p.symbol == "BTCUSDT"]
        assert_received_in_order(received, btc_sent, "mark_price", scenario)
        done = client.named("stream_done")[0]
        assert done["symbols"] == ["BTCUSDT"], f"expected the client to report BTCUSDT only, got {done}"
