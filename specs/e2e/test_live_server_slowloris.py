"""A sustained slowloris against live_server, well past its connection limit (rule L27; -m perf).

live_server starts under an open-file soft limit of 1,024, a common default (rule H20). An
attacker keeps 3,000 unfinished requests open for a minute, opening a new one for each the
server closes (up to 1,000 a second), while a normal client asks for /api/account five times a second. The normal
client's answers are what counts: the attack must not lock it out.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from harness.fixtures import MetricRecorder
from specs.e2e.conftest import CONNECTOR, LIVE_SERVER, Stack
from specs.e2e.held_requests import HeldRequests

SUSTAINED_SLOWLORIS = "5.1.1.x37"
ATTACKERS = 3000
DURATION_S = 60.0
ASK_EVERY_S = 0.2
ANSWER_WITHIN_S = 2.0
SERVED_TARGET_PCT = 99.0
TRICKLE_EVERY_S = 2.0
REOPEN_PER_S = 1000  # the attacker reopens closed connections at up to this rate: slowloris, not a flood

COMMON_FILE_LIMIT = 1024  # rule H20: a common default soft limit of open files

pytestmark = [pytest.mark.perf, pytest.mark.perf_long]


@contextlib.contextmanager
def file_limit_for_children(soft: int) -> Iterator[None]:
    """Programs started inside inherit an open-file soft limit of `soft` (this process gets its own back)."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


class NormalClient(threading.Thread):
    """Asks for the account every ASK_EVERY_S and counts the answers that are 200 in time."""

    def __init__(self, url: str) -> None:
        super().__init__(name="normal-client", daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.asked = self.served = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(trust_env=False) as client:
            while not self.stop.wait(ASK_EVERY_S):
                self.asked += 1
                try:
                    response = client.get(self.url, timeout=ANSWER_WITHIN_S)
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                    continue
                if response.status_code == 200:
                    self.served += 1
                else:
                    self.failures.append(str(response.status_code))


@pytest.mark.scenario(SUSTAINED_SLOWLORIS)
@pytest.mark.requires("http_hardening")
@pytest.mark.timeout(180)
def test_sustained_slowloris_does_not_lock_out_normal_requests(
    bare_stack: Stack, metrics: MetricRecorder
) -> None:
    live_stack = bare_stack
    live_stack.start(CONNECTOR)
    with file_limit_for_children(COMMON_FILE_LIMIT):
        live_stack.start(LIVE_SERVER)
    held = HeldRequests()
    normal = NormalClient(f"{live_stack.base_url}/api/account")
    refused = 0
    try:
        normal.start()
        deadline = time.monotonic() + DURATION_S
        next_trickle = time.monotonic() + TRICKLE_EVERY_S
        started = time.monotonic()
        while time.monotonic() < deadline:
            allowed = int((time.monotonic() - started) * REOPEN_PER_S) + ATTACKERS - held.opened_total
            for _ in range(max(0, min(allowed, ATTACKERS - len(held.open)))):
                try:
                    held.open_one(live_stack.http_port)
                except OSError:
                    refused += 1
                    break
            held.poll(0.05)
            if time.monotonic() >= next_trickle:
                held.trickle()
                next_trickle += TRICKLE_EVERY_S
    finally:
        normal.stop.set()
        normal.join(ANSWER_WITHIN_S + 5)
        held.close()
    served_pct = 100.0 * normal.served / max(1, normal.asked)
    metrics.record("slowloris_served_pct", served_pct, "%")
    metrics.record("slowloris_attacker_connections_closed", float(held.closed), "")
    failures = ", ".join(sorted(set(normal.failures))) or "none"
    assert normal.asked > 0 and served_pct >= SERVED_TARGET_PCT, (
        f"under rule L27, expected at least {SERVED_TARGET_PCT:.0f} % of a normal "
        f"client's requests answered 200 within {ANSWER_WITHIN_S:.0f} s during {DURATION_S:.0f} s of "
        f"{ATTACKERS} unfinished requests, got {served_pct:.1f} % ({normal.served} of {normal.asked}; "
        f"failures: {failures}; attacker connections closed by the server: {held.closed}, refused: {refused})"
    )
