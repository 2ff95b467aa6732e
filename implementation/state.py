"""What a client program knows about the account: the latest account, the positions by symbol,
when each last changed, and whether the connector is reachable right now.

LiveState is plain data plus listeners; it runs on one event loop and never awaits, so a listener
sees every change in order. Values stay the exchange's decimal strings end to end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from opensqt.exchange.v1 import exchange_pb2 as pb

ChangeKind = Literal["account", "position", "snapshot", "status"]
ChangeSource = Literal["stream", "resync", "status"]

_log = logging.getLogger(__name__)


def message_fields(message: Message) -> dict[str, str]:
    """Every field of an Account or Position as a string; timestamps as RFC 3339 (empty if unset)."""
    fields: dict[str, str] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if isinstance(value, Timestamp):
            fields[field.name] = value.ToJsonString() if message.HasField(field.name) else ""
        else:
            fields[field.name] = str(value)
    return fields


@dataclass(frozen=True)
class StateChange:
    """One change of a LiveState, in the order it happened."""

    kind: ChangeKind
    source: ChangeSource
    account: pb.Account | None = None  # kind "account", and "snapshot"
    position: pb.Position | None = None  # kind "position"
    positions: tuple[pb.Position, ...] = ()  # kind "snapshot"


Listener = Callable[[StateChange], object]


class LiveState:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._listeners: list[Listener] = []
        self.account: pb.Account | None = None
        self.positions: dict[str, pb.Position] = {}
        self.account_received_at: float | None = None
        self.positions_received_at: float | None = None
        self.connected = False
        self.reason = "not connected to the exchange connector yet"
        self.updates = 0

    # ------------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, change: StateChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # one broken listener must not starve the others
                _log.exception("state listener failed on %s change", change.kind)

    # ------------------------------------------------------------------ changes
    def apply_account(self, account: pb.Account) -> None:
        self.account = account
        self.account_received_at = self._clock()
        self.updates += 1
        self._notify(StateChange("account", "stream", account=account))

    def apply_position(self, position: pb.Position) -> None:
        self.positions[position.symbol] = position
        self.positions_received_at = self._clock()
        self.updates += 1
        self._notify(StateChange("position", "stream", position=position))

    def resync(self, account: pb.Account, positions: Iterable[pb.Position]) -> None:
        """Replace everything with a fresh read (after connecting or reconnecting) and mark connected."""
        now = self._clock()
        self.account = account
        self.positions = {position.symbol: position for position in positions}
        self.account_received_at = self.positions_received_at = now
        self.connected, self.reason = True, ""
        self._notify(
            StateChange("snapshot", "resync", account=account, positions=tuple(self.positions.values()))
        )

    def mark_connected(self) -> None:
        if not self.connected:
            self.connected, self.reason = True, ""
            self._notify(StateChange("status", "status"))

    def mark_disconnected(self, reason: str) -> None:
        changed = self.connected or reason != self.reason
        self.connected, self.reason = False, reason
        if changed:
            self._notify(StateChange("status", "status"))

    # ------------------------------------------------------------------ reading
    @property
    def has_data(self) -> bool:
        return self.account is not None

    @property
    def ready(self) -> bool:
        return self.connected and self.has_data

    @property
    def not_ready_reason(self) -> str:
        """Why the program is not ready ("" when it is)."""
        if not self.connected:
            return self.reason or "not connected to the exchange connector"
        if not self.has_data:
            return "connected, waiting for the first account data"
        return ""

    def position_list(self, symbol: str = "") -> list[pb.Position]:
        if symbol:
            position = self.positions.get(symbol)
            return [position] if position is not None else []
        return list(self.positions.values())

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "ready": self.ready, "reason": self.not_ready_reason}

    def snapshot(self) -> dict[str, Any]:
        """Everything held, JSON-ready: account (or None), positions, connection status."""
        return {
            "account": message_fields(self.account) if self.account is not None else None,
            "positions": [message_fields(position) for position in self.positions.values()],
            "status": self.status(),
        }
