"""The machine steadiness probe: a steady machine reads steady, a stalled run is counted."""

from __future__ import annotations

import itertools

import pytest

from harness.perf import machine_probe


@pytest.mark.exclusive  # it times the machine: alone, before the fault matrix starts
def test_a_short_probe_times_about_a_millisecond_of_work_many_times() -> None:
    report = machine_probe.probe_steadiness(duration_s=0.3)
    assert 0.2 <= report.unit_ms <= 5.0, report
    assert report.runs >= 20, report
    assert report.max_ms >= report.p99_ms > 0, report
    assert "piece of CPU work took up to" in report.describe()


def test_stalled_runs_are_counted_and_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # calibration sees 1 ms; then every tenth run takes 15 ms, as when the host takes the CPU away
    calls = itertools.count()

    def timed(iterations: int) -> float:
        index = next(calls)
        return 0.015 if index > 30 and index % 10 == 0 else 0.001

    monkeypatch.setattr(machine_probe, "_timed", timed)
    monkeypatch.setattr(machine_probe, "_calibrate", lambda target_s: (1000, 0.001))
    report = machine_probe.probe_steadiness(duration_s=0.2, pause_s=0.0005)
    assert report.max_ms == pytest.approx(15.0)
    expected_slow = sum(1 for index in range(report.runs) if index > 30 and index % 10 == 0)
    assert expected_slow >= 1, report
    assert report.slow_runs == expected_slow, report
