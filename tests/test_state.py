"""LiveState: what a client program holds, its readiness and the changes its listeners see."""

from __future__ import annotations

import pytest

from implementation.state import LiveState, StateChange, message_fields
from opensqt.exchange import testdata
from opensqt.exchange.v1 import exchange_pb2 as pb

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def recording(state: LiveState) -> list[StateChange]:
    changes: list[StateChange] = []
    state.add_listener(changes.append)
    return changes


def test_new_state_is_not_ready_and_says_why() -> None:
    state = LiveState()
    assert not state.ready and not state.has_data, "expected a new state to hold nothing"
    assert "not connected" in state.not_ready_reason, f"expected a reason, got {state.not_ready_reason!r}"
    assert state.snapshot()["account"] is None, f"expected no account, got {state.snapshot()}"


def test_resync_replaces_everything_and_marks_ready() -> None:
    clock = Clock()
    state = LiveState(clock)
    state.apply_position(pb.Position(symbol="OLDUSDT", side="LONG"))
    changes = recording(state)
    state.resync(testdata.spec_account(), testdata.spec_positions())
    assert state.ready, f"expected ready after a resync, got reason {state.not_ready_reason!r}"
    assert list(state.positions) == ["BTCUSDT", "ETHUSDT"], (
        f"expected the read's positions only, got {state.positions}"
    )
    assert state.account_received_at == clock.now, (
        f"expected the receive time, got {state.account_received_at}"
    )
    assert [c.kind for c in changes] == ["snapshot"], f"expected one snapshot change, got {changes}"
    assert len(changes[0].positions) == 2, f"expected the snapshot to carry 2 positions, got {changes[0]}"


def test_updates_keep_latest_per_symbol_in_order() -> None:
    state = LiveState()
    state.resync(testdata.spec_account(), testdata.spec_positions())
    changes = recording(state)
    btc = testdata.spec_positions()[0]
    btc.mark_price = "42000.50"
    state.apply_position(btc)
    state.apply_position(pb.Position(symbol="SOLUSDT", side="SHORT", size="3"))
    state.apply_account(testdata.spec_account(total_balance="12.30"))
    assert [c.kind for c in changes] == ["position", "position", "account"], (
        f"got {[c.kind for c in changes]}"
    )
    assert state.positions["BTCUSDT"].mark_price == "42000.50", f"got {state.positions['BTCUSDT']}"
    assert list(state.positions) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"], f"got {list(state.positions)}"
    assert state.account is not None and state.account.total_balance == "12.30", f"got {state.account}"
    assert state.updates == 3, f"expected 3 updates counted, got {state.updates}"


def test_position_filter_by_symbol() -> None:
    state = LiveState()
    state.resync(testdata.spec_account(), testdata.spec_positions())
    assert [p.symbol for p in state.position_list("ETHUSDT")] == ["ETHUSDT"], "expected only ETHUSDT"
    assert state.position_list("XRPUSDT") == [], "expected no position for an unknown symbol"
    assert len(state.position_list()) == 2, "expected every position with an empty symbol"


def test_disconnect_keeps_data_but_is_not_ready() -> None:
    state = LiveState()
    state.resync(testdata.spec_account(), testdata.spec_positions())
    changes = recording(state)
    state.mark_disconnected("connector gone")
    state.mark_disconnected("connector gone")  # same status again: no new change
    assert state.has_data and not state.ready, "expected the data kept but not ready"
    assert state.not_ready_reason == "connector gone", f"got {state.not_ready_reason!r}"
    assert [c.kind for c in changes] == ["status"], f"expected one status change, got {changes}"
    state.mark_connected()
    assert state.ready and state.status() == {"connected": True, "ready": True, "reason": ""}, (
        f"{state.status()}"
    )


def test_connected_without_data_explains_the_wait() -> None:
    state = LiveState()
    state.mark_connected()
    assert not state.ready, "expected not ready without data"
    assert "waiting for the first account" in state.not_ready_reason, f"got {state.not_ready_reason!r}"


def test_failing_listener_does_not_starve_the_others(caplog: pytest.LogCaptureFixture) -> None:
    state = LiveState()

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    state.add_listener(broken)
    changes = recording(state)
    state.apply_account(testdata.spec_account())
    assert [c.kind for c in changes] == ["account"], f"expected the second listener called, got {changes}"
    assert "listener bug" in caplog.text, f"expected the failure logged, got {caplog.text!r}"
    state.remove_listener(broken)
    state.apply_account(testdata.spec_account())
    assert len(changes) == 2, f"expected delivery to go on, got {changes}"


def test_message_fields_are_strings_exactly_as_sent() -> None:
    account = testdata.spec_account(total_balance="10000.00", unrealized_pnl="-0.000001")
    fields = message_fields(account)
    assert fields["total_balance"] == "10000.00", f"expected the decimal unchanged, got {fields}"
    assert fields["unrealized_pnl"] == "-0.000001", f"expected the decimal unchanged, got {fields}"
    assert fields["updated_at"].endswith("Z"), f"expected an RFC 3339 time, got {fields['updated_at']!r}"
    assert all(isinstance(value, str) for value in fields.values()), f"expected only strings, got {fields}"
    assert message_fields(pb.Account())["updated_at"] == "", "expected an unset time as an empty string"
    position = message_fields(testdata.spec_positions()[1])
    assert set(position) == {f.name for f in pb.Position.DESCRIPTOR.fields}, (
        f"expected every field, got {position}"
    )
