"""The §5.1 full stack: the SUT's three programs, started by the harness launcher, and what the
scenarios need to read them.

`stack` starts exchange_connector (its upstream: the harness's mock exchange), then market_maker
and live_server pointed at it; `live_stack` starts only the connector and live_server;
`bare_stack` starts nothing, for tests that choose the order. The launcher stops every program at
teardown, even after a failure, and attaches each program's last log lines to a failed test.

Everything here is black-box: the programs come from the SUT manifest; values are compared as the
contract's strings; JSON answers and log events are searched for the record that carries an
update's marker rather than read at one fixed place, so other response shapes still match.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from harness.doubles.mock_exchange import MockExchangeServer
from harness.sut.launch import EventNotSeen, ProgramLauncher, RunningProgram
from harness.sut.program_log import error_lines
from opensqt.exchange.v1 import exchange_pb2 as pb

CONNECTOR, MARKET_MAKER, LIVE_SERVER = "exchange_connector", "market_maker", "live_server"
PROGRAMS = (CONNECTOR, MARKET_MAKER, LIVE_SERVER)
CLIENTS = (MARKET_MAKER, LIVE_SERVER)
TOPICS = ("account", "positions")
UPDATE_WAIT_S = 10.0  # an update crosses three processes in milliseconds; this is margin for a busy host
HTTP_TIMEOUT_S = 5.0
RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


# ------------------------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    """The mock exchange, the launcher and the ports of one stack; the programs once started."""

    mock: MockExchangeServer
    launcher: ProgramLauncher
    grpc_port: int
    metrics_port: int
    http_port: int
    programs: dict[str, RunningProgram] = field(default_factory=dict)

    @property
    def connector_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def connector(self) -> RunningProgram:
        return self.programs[CONNECTOR]

    @property
    def market_maker(self) -> RunningProgram:
        return self.programs[MARKET_MAKER]

    @property
    def live_server(self) -> RunningProgram:
        return self.programs[LIVE_SERVER]

    def values(self, name: str) -> dict[str, Any]:
        """The manifest placeholders of program `name` in this stack."""
        if name == CONNECTOR:
            return {
                "upstream": self.mock.address,
                "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port,
            }
        values: dict[str, Any] = {"connector": self.connector_address}
        if name == LIVE_SERVER:
            values["http_port"] = self.http_port
        return values

    def start(
        self, name: str, *, wait_ready: bool = True, ready_timeout: float | None = None
    ) -> RunningProgram:
        """Start program `name` (again, for a restart: same ports) and, by default, wait until it is ready."""
        program = self.launcher.start(
            name, self.values(name), wait_ready=wait_ready, ready_timeout=ready_timeout
        )
        self.programs[name] = program
        return program

    def start_all(self, names: tuple[str, ...] = PROGRAMS) -> Stack:
        for name in names:
            self.start(name)
        return self


def make_stack(mock: MockExchangeServer, launcher: ProgramLauncher, allocate: Callable[[], int]) -> Stack:
    return Stack(mock, launcher, grpc_port=allocate(), metrics_port=allocate(), http_port=allocate())


@pytest.fixture
def bare_stack(
    mock_exchange: MockExchangeServer, launcher: ProgramLauncher, free_port: Callable[[], int]
) -> Stack:
    """A stack with its mock exchange running and its ports chosen; no program started yet."""
    return make_stack(mock_exchange, launcher, free_port)


@pytest.fixture
def stack(bare_stack: Stack) -> Stack:
    """exchange_connector, then market_maker and live_server, each ready."""
    return bare_stack.start_all()


@pytest.fixture
def live_stack(bare_stack: Stack) -> Stack:
    """exchange_connector, then live_server, each ready (no market_maker)."""
    return bare_stack.start_all((CONNECTOR, LIVE_SERVER))


# ------------------------------------------------------------------------------------------ updates


@dataclass(frozen=True)
class Sent:
    """An update the test made the exchange send: every field as the contract's string, and the
    marker (field, value) that tells it apart from every other state of the run."""

    kind: str  # "account" or "position"
    fields: Mapping[str, str]
    marker: str
    timestamps: frozenset[str] = frozenset()

    @property
    def marker_value(self) -> str:
        return self.fields[self.marker]

    def carried_by(self, record: Mapping[str, Any]) -> bool:
        """True when `record` holds this update: its marker as a number (so a reformatted value still
        counts as delivered), and for a position the same symbol."""
        if self.kind == "position" and record.get("symbol") != self.fields["symbol"]:
            return False
        return same_number(record.get(self.marker), self.marker_value)

    def find(self, value: Any) -> dict[str, Any] | None:
        """The first JSON object within `value` (itself included) that carries this update."""
        return next((record for record in json_objects(value) if self.carried_by(record)), None)

    def differences(self, record: Mapping[str, Any]) -> list[str]:
        """Every field of `record` that is not exactly what was sent (timestamps: the same instant)."""
        found = []
        for name, expected in self.fields.items():
            got = record.get(name)
            if name in self.timestamps:
                same = isinstance(got, str) and instant(got) is not None and instant(got) == instant(expected)
            else:
                same = got == expected
            if not same:
                found.append(f"{name}: expected {expected!r}, got {got!r}")
        return found

    def describe(self) -> str:
        return f"{self.kind} update with {self.marker}={self.marker_value!r}"


def contract_fields(message: Message) -> tuple[dict[str, str], frozenset[str]]:
    """Every field of an Account or Position as the string a client shows (timestamps RFC 3339)."""
    fields: dict[str, str] = {}
    stamps = set()
    for descriptor in message.DESCRIPTOR.fields:
        value = getattr(message, descriptor.name)
        if isinstance(value, Timestamp):
            fields[descriptor.name] = value.ToJsonString()
            stamps.add(descriptor.name)
        else:
            fields[descriptor.name] = str(value)
    return fields, frozenset(stamps)


def _stamp_now(offset_ms: int) -> Timestamp:
    millis = int(time.time() * 1000) + offset_ms  # whole milliseconds: every RFC 3339 reader keeps them
    return Timestamp(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


def account_update(seed: int) -> tuple[pb.Account, Sent]:
    """An account unlike the spec's data and unlike any other seed's, its figures consistent with
    each other. Its marker (total_balance) is a canonical decimal; other fields keep trailing zeros,
    which a client must not strip."""
    total, margin_used = Decimal("98765.4321") + seed, Decimal("53086.5300") + seed
    pnl = -(Decimal("1234.50") + seed)
    equity = total + pnl
    account = pb.Account(
        total_balance=str(total),
        available_balance=str(total - margin_used),
        equity=str(equity),
        unrealized_pnl=str(pnl),
        margin_used=str(margin_used),
        margin_level=str((equity / margin_used * 100).quantize(Decimal("0.01"))),
        leverage="7.50",
        updated_at=_stamp_now(seed),
    )
    fields, stamps = contract_fields(account)
    return account, Sent("account", fields, "total_balance", stamps)


def position_update(seed: int, symbol: str = "BTCUSDT") -> tuple[pb.Position, Sent]:
    """A position of `symbol` unlike the spec's data; its marker is mark_price."""
    entry, size, mark = Decimal("40001.10"), Decimal("0.7500"), Decimal("41234.56") + seed
    position = pb.Position(
        symbol=symbol,
        side="LONG",
        size=str(size),
        entry_price=str(entry),
        mark_price=str(mark),
        leverage="12",
        unrealized_pnl=str(((mark - entry) * size).quantize(Decimal("0.0001"))),
        liquidation="36500.00",
        margin_type="ISOLATED",
    )
    fields, stamps = contract_fields(position)
    return position, Sent("position", fields, "mark_price", stamps)


def same_number(got: Any, expected: str) -> bool:
    try:
        return isinstance(got, (str, int, float)) and Decimal(str(got)) == Decimal(expected)
    except InvalidOperation:
        return False


def instant(text: str) -> tuple[int, int] | None:
    """(seconds since the epoch, nanoseconds) of an RFC 3339 timestamp; None if it is not one."""
    match = RFC3339.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    return seconds, int((match.group(7) or "").ljust(9, "0"))


def json_objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object within `value`, depth first, `value` itself first."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from json_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_objects(item)


# ------------------------------------------------------------------------------------------ reading


@dataclass
class Answer:
    """One HTTP answer (status None: no answer, `text` says why)."""

    status: int | None
    text: str
    content_type: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def __str__(self) -> str:
        shown = " ".join(self.text.split())[:300]
        return f"{self.status} {shown}" if self.status is not None else f"no answer ({shown})"


def carrying(sent: Sent) -> Callable[[Answer], bool]:
    """A test for poll_http: the answer's JSON holds the update `sent`."""
    return lambda answer: sent.find(answer.json()) is not None


def http_get(client: httpx.Client, url: str) -> Answer:
    try:
        response = client.get(url, timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}")
    return Answer(response.status_code, response.text, response.headers.get("content-type", ""))


def poll_http(url: str, accept: Callable[[Answer], bool], timeout: float) -> tuple[bool, Answer]:
    """GET `url` until `accept` holds for the answer or `timeout` passes: (accepted, last answer)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False) as client:
        while True:
            answer = http_get(client, url)
            if accept(answer):
                return True, answer
            if time.monotonic() >= deadline:
                return False, answer
            time.sleep(0.05)


def logged_update(
    program: RunningProgram, event: str, sent: Sent, timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """(the record of the first `event` log line carrying `sent`, "") or (None, what was logged instead)."""
    try:
        found = program.wait_for_event(event, lambda record: sent.find(record) is not None, timeout)
    except EventNotSeen:
        seen = program.events(event)
        last = json.dumps(seen[-1])[:400] if seen else "none"
        return (
            None,
            f"no {event!r} event carrying the {sent.describe()} within {timeout} s ({len(seen)} {event!r} events, last: {last})",
        )
    return sent.find(found), ""


class FeedReader:
    """Reads a WebSocket feed and keeps every JSON message, so a search can look back."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.messages: list[Any] = []
        self.closed: str | None = None

    def find(self, sent: Sent, timeout: float) -> dict[str, Any] | None:
        """The record of the first message (already read, or read within `timeout`) carrying `sent`."""
        for message in self.messages:
            if (record := sent.find(message)) is not None:
                return record
        deadline = time.monotonic() + timeout
        while self.closed is None and (remaining := deadline - time.monotonic()) > 0:
            try:
                raw = self.connection.recv(timeout=remaining)
            except TimeoutError:
                break
            except ConnectionClosed as exc:
                self.closed = f"the server closed the WebSocket: {exc}"
                break
            try:
                message = json.loads(raw)
            except ValueError:  # not JSON: kept as text, it carries nothing
                message = raw if isinstance(raw, str) else repr(raw)
            self.messages.append(message)
            if (record := sent.find(message)) is not None:
                return record
        return None

    def message_carrying(self, sent: Sent) -> Any:
        """The first message already read that carries `sent` (None if none does)."""
        return next((message for message in self.messages if sent.find(message) is not None), None)

    def summary(self) -> str:
        kinds = [m.get("type", "?") if isinstance(m, dict) else type(m).__name__ for m in self.messages]
        return f"{len(self.messages)} message(s) read ({', '.join(kinds[-8:]) or 'none'})" + (
            f"; {self.closed}" if self.closed else ""
        )


def program_error_lines(program: RunningProgram) -> list[str]:
    """The error lines (rule H4) of a program's stderr and stdout."""
    return error_lines(program.log_lines() + program.output_lines())
