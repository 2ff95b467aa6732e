"""The accelerated soak: SOAK_SPEEDUP / --soak-speedup scale the spec's mix of events, and a bad
value stops the run naming the flag or the variable."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.options import positive_float
from harness.perf.soak import SoakConfig, SoakRun


def test_the_speedup_scales_updates_polls_and_restarts_but_not_snapshots() -> None:
    real = SoakConfig.from_env(24 * 3600)
    fast = SoakConfig.from_env(3600, speedup=24)
    assert fast.equivalent_s == real.duration_s
    assert fast.account_interval_s == pytest.approx(5.0 / 24)
    assert fast.position_interval_s == pytest.approx(1.0 / 24)
    assert fast.poll_interval_s == pytest.approx(1.0 / 24)
    assert fast.restart_interval_s == pytest.approx(real.restart_interval_s / 24)
    assert fast.snapshot_interval_s == 60.0  # wall time: the same number of snapshots per hour


def test_a_bad_speedup_names_the_flag() -> None:
    with pytest.raises(pytest.UsageError, match="--soak-speedup: must be positive"):
        positive_float("--soak-speedup")("0")
    with pytest.raises(pytest.UsageError, match="SOAK_SPEEDUP: 'fast' is not a number"):
        positive_float("SOAK_SPEEDUP")("fast")


@pytest.mark.timeout(60)
def test_a_bad_soak_speedup_stops_the_soak_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--soak-speedup", "-3")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--soak-speedup: must be positive, got -3*"])


def test_a_program_the_soak_is_restarting_is_not_counted_as_down(tmp_path: Path) -> None:
    connector = SimpleNamespace(pid=os.getpid(), running=True, address="127.0.0.1:1")
    run = SoakRun(SoakConfig.from_env(60, speedup=24), Any, connector, tmp_path / "s.jsonl")  # type: ignore[arg-type]
    run.programs = {
        "market_maker": SimpleNamespace(running=False),
        "live_server": SimpleNamespace(running=False),
    }
    run.restarting.add("market_maker")
    record = run.snapshot()
    assert record["programs_running"] == {"market_maker": True, "live_server": False}
    assert record["programs_restarting"] == ["market_maker"]
    assert record["t_equiv_s"] == pytest.approx(record["t_s"] * 24, abs=0.1)
