"""Tagged updates: the account and position messages every benchmark, baseline and load client
sends, each carrying its run and sequence number in a decimal field and its send time in
``updated_at`` (see harness.perf.loadgen for how they are measured), and the schedule that paces
them. Shared by the test doubles and the perf machinery alike, so it belongs to neither."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from opensqt.exchange.v1 import exchange_pb2 as pb

SEQ_DIGITS = 9
PRIMING_RUN = 0  # the run number of updates that only check that every subscriber is listening


def format_tag(run: int, seq: int) -> str:
    """The decimal string that carries `run` and `seq`: format_tag(3, 42) == "3.000000042"."""
    if run < 0 or not 0 <= seq < 10**SEQ_DIGITS:
        raise ValueError(f"run must be >= 0 and seq within 0..{10**SEQ_DIGITS - 1}, got run={run} seq={seq}")
    return f"{run}.{seq:0{SEQ_DIGITS}d}"


def parse_tag(text: str) -> tuple[int, int] | None:
    """(run, seq) from a tag written by format_tag; None for any other value."""
    whole, dot, fraction = text.partition(".")
    if not dot or not whole.isdigit() or not fraction.isdigit() or len(fraction) > SEQ_DIGITS:
        return None
    return int(whole), int(fraction.ljust(SEQ_DIGITS, "0"))


def stamp(now_ns: int | None = None) -> Timestamp:
    stamped = Timestamp()
    stamped.FromNanoseconds(time.time_ns() if now_ns is None else now_ns)
    return stamped


def tagged_account(run: int, seq: int, *, now_ns: int | None = None) -> pb.Account:
    """The spec's §8.1 account carrying (run, seq) in total_balance and its send time in updated_at."""
    return pb.Account(
        total_balance=format_tag(run, seq),
        available_balance="5000.00",
        equity="9500.00",
        unrealized_pnl="-500.00",
        margin_used="5000.00",
        margin_level="190.00",
        leverage="10.0",
        updated_at=stamp(now_ns),
    )


def tagged_position(run: int, seq: int, symbol: str = "BTCUSDT") -> pb.Position:
    """A §8.2-like position carrying (run, seq) in size (positions have no timestamp field)."""
    return pb.Position(
        symbol=symbol,
        side="LONG",
        size=format_tag(run, seq),
        entry_price="40000.00",
        mark_price="41000.00",
        leverage="10",
        unrealized_pnl="500.00",
        liquidation="36000.00",
        margin_type="ISOLATED",
    )


def account_tag(account: pb.Account) -> tuple[int, int] | None:
    return parse_tag(account.total_balance)


def position_tag(position: pb.Position) -> tuple[int, int] | None:
    return parse_tag(position.size)


def latency_ns(account: pb.Account, received_ns: int | None = None) -> int:
    """Wall-clock time from the account's send stamp to `received_ns` (default: now)."""
    now = time.time_ns() if received_ns is None else received_ns
    return now - account.updated_at.ToNanoseconds()


@dataclass(frozen=True)
class Schedule:
    """Item i (1-based) is due at (i - 1) / rate seconds after the start; rate <= 0 means all at once.

    An absolute schedule never drifts: a generator that fell behind catches up in a burst.
    """

    rate: float

    def due_by(self, elapsed_s: float) -> int:
        """How many items are due `elapsed_s` seconds after the start."""
        if self.rate <= 0:
            return 2**62
        return max(0, math.floor(elapsed_s * self.rate + 1e-9) + 1)

    def due_at(self, index: int) -> float:
        """Seconds after the start when item `index` (1-based) is due."""
        return 0.0 if self.rate <= 0 else (index - 1) / self.rate
