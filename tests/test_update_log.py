"""The client programs' per-update log lines: every one, or sampled (the library)."""

from __future__ import annotations

import logging

import pytest

from implementation.clients import UpdateLog
from implementation.config import LogSettings
from implementation.state import LiveState
from opensqt.exchange.testdata import spec_account, spec_positions

pytestmark = pytest.mark.timeout(10)


def updates(caplog: pytest.LogCaptureFixture, settings: LogSettings, times: list[float]) -> list[str]:
    now = [0.0]
    state = LiveState()
    logger = logging.getLogger("test.update_log")
    UpdateLog(state, logger, settings, clock=lambda: now[0])
    state.resync(spec_account(), spec_positions())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test.update_log"):
        for moment in times:
            now[0] = moment
            state.apply_account(spec_account())
    return [
        record.fields.get("updates", "-")  # type: ignore[attr-defined]
        for record in caplog.records
        if getattr(record, "event", "") == "account_update"
    ]


def test_every_update_is_logged_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    assert updates(caplog, LogSettings(updates="every"), [0.0, 0.1, 0.2]) == ["-", "-", "-"]


def test_sampled_updates_log_one_line_per_interval_counting_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    times = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 3.0]
    assert updates(caplog, LogSettings(), times) == ["1", "5", "2"], "expected lines at 0, 1 and 3 s"
