"""§7.1 soak: the connector and its clients run for the soak duration (default 24 h; SOAK_DURATION
or --soak-duration, e.g. 10m) under steady updates with random client restarts, and stay healthy.

Accelerated: SOAK_SPEEDUP=N (or --soak-speedup N) sends the same mix of events N times as often,
so a run of D carries D x N of events (SOAK_DURATION=1h SOAK_SPEEDUP=24: a day of events in an
hour). The criteria are judged over the run's events, not its wall time: the error rate per
operation, the RSS growth and the thread/task drift after all of them, the p99 of the first
interval's deliveries against the last's. The report states the wall time and the equivalent time.

Runs only with SOAK_TEST=1 and -m soak. Method: harness/perf/soak.py (load, restarts, snapshots and
what counts as an error). Snapshots go to reports/soak-snapshots.jsonl, plotted by
tools/plot_soak.py to reports/soak-snapshots.png at the end of the run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.options import soak_speedup
from harness.perf.results import PerfRecorder
from harness.perf.soak import SoakConfig, SoakRun
from harness.verdicts import Verdicts
from specs.targets import check_target

pytestmark = pytest.mark.soak

ERROR_RATE_TARGET_PCT = 0.01
MEMORY_GROWTH_TARGET_MB = 50.0
DRIFT_TARGET = 10
P99_RATIO_TARGET = 1.5
ROOT = Path(__file__).resolve().parents[2]


def _drift(snapshots: list[dict[str, Any]]) -> int:
    """The largest distance of the connector's threads and the test process's threads and tasks from
    their first snapshot's counts."""
    first = snapshots[0]
    keys = ("server_threads", "client_threads", "client_tasks")
    return max(abs(int(s[key]) - int(first[key])) for s in snapshots for key in keys)


def _p99_ratio(snapshots: list[dict[str, Any]]) -> tuple[float, float, float]:
    measured = [s["latency_p99_ms"] for s in snapshots if s["latency_p99_ms"]]
    if len(measured) < 2:
        return float("nan"), float("nan"), float("nan")
    return measured[-1] / measured[0], measured[0], measured[-1]


@pytest.mark.scenario("7.1.1.a", "7.1.1.b", "7.1.1.c", "7.1.1.d", "7.1.1.e")
@pytest.mark.asyncio
async def test_soak_runs_its_duration_with_restarts_and_stays_stable(
    soak_duration: float,
    connector: Any,
    mock_exchange: Any,
    launcher: Any,
    free_port: Any,
    perf: PerfRecorder,
    pytestconfig: pytest.Config,
    verdicts: Verdicts,
) -> None:
    config = SoakConfig.from_env(soak_duration, soak_speedup(pytestconfig))
    report_dir = Path(pytestconfig.getoption("report_dir"))
    path = report_dir / "soak-snapshots.jsonl"

    def start_program(name: str) -> Any:
        values = {"connector": connector.address}
        if name == "live_server":
            values["http_port"] = free_port()
        return launcher.start(name, values)

    run = SoakRun(config, mock_exchange, connector, path, start_program=start_program)
    try:
        await run.start()
        await run.run()
    finally:
        await run.stop()
    snapshots = run.snapshots
    assert snapshots, "expected at least one snapshot of the soak run, got none"

    rate = 100.0 * run.tally.errors / run.tally.operations if run.tally.operations else 100.0
    growth = snapshots[-1]["server_rss_mb"] - snapshots[0]["server_rss_mb"]
    drift = _drift(snapshots)
    ratio, first_p99, last_p99 = _p99_ratio(snapshots)
    events = snapshots[-1]["events"]
    perf.record("soak_duration_s", snapshots[-1]["t_s"], "s")
    perf.record("soak_speedup", config.speedup, "x")
    perf.record("soak_equivalent_s", snapshots[-1]["t_equiv_s"], "s")
    perf.record("soak_events", events, "events")
    perf.record("soak_operations", run.tally.operations, "ops")
    perf.record("soak_error_rate_pct", rate, "%")
    perf.record("soak_memory_growth_mb", growth, "MB")
    perf.record(
        "soak_client_memory_growth_mb", snapshots[-1]["client_rss_mb"] - snapshots[0]["client_rss_mb"], "MB"
    )
    perf.record("soak_memory_growth_kb_per_10k_events", 1024.0 * growth * 10_000 / max(1, events), "KB")
    perf.record("soak_task_drift", drift, "tasks")
    perf.record("soak_p99_ratio", ratio, "x")
    perf.record("soak_p99_first_ms", first_p99, "ms")
    perf.record("soak_p99_last_ms", last_p99, "ms")
    perf.record("soak_restarts", run.tally.restarts, "restarts")
    perf.detail("config", {**config.__dict__, "equivalent_s": config.equivalent_s})
    perf.detail("errors_by_kind", run.tally.errors_by_kind)
    perf.detail("operations", run.tally.operations)
    perf.detail("snapshots_file", str(path))

    plot = path.with_suffix(".png")
    title = f"Soak, {config.duration_s / 3600:.2g} h wall" + (
        f" x{config.speedup:g} = {config.equivalent_s / 3600:.3g} h of events" if config.speedup != 1 else ""
    )
    plotted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "tools" / "plot_soak.py"), str(path), "--output", str(plot), "--title", title],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert plotted.returncode == 0 and plot.is_file(), (
        f"expected a plot at {plot}, got: {plotted.stderr[-500:]}"
    )

    crashed = [s["t_s"] for s in snapshots if not s["connector_running"]]
    down = [(s["t_s"], n) for s in snapshots for n, up in s["programs_running"].items() if not up]
    with verdicts.check("7.1.1.a"):
        assert not (snapshots[-1]["t_s"] < soak_duration - 1.0 or crashed or down or run.program_exits), (
            f"expected {soak_duration:.0f} s with no crash, got {snapshots[-1]['t_s']:.0f} s; "
            f"connector down at {crashed[:3]}, programs down at {down[:3]}, exits: {run.program_exits[:3]}"
        )
    check_target(
        verdicts,
        "7.1.1.b",
        rate < ERROR_RATE_TARGET_PCT,
        f"an error rate below {ERROR_RATE_TARGET_PCT} %",
        f"{rate:.4f} % ({run.tally.errors} of {run.tally.operations}: {run.tally.errors_by_kind})",
    )
    check_target(
        verdicts,
        "7.1.1.c",
        growth < MEMORY_GROWTH_TARGET_MB,
        f"connector RSS growth below {MEMORY_GROWTH_TARGET_MB} MB",
        f"{growth:.1f} MB",
    )
    check_target(
        verdicts,
        "7.1.1.d",
        drift <= DRIFT_TARGET,
        f"thread/task counts within ±{DRIFT_TARGET}",
        f"a drift of {drift}",
    )
    check_target(
        verdicts,
        "7.1.1.e",
        ratio <= P99_RATIO_TARGET,
        f"a stable latency, the last interval's p99 within {P99_RATIO_TARGET}x of the first's",
        f"{ratio:.2f}x ({first_p99:.2f} -> {last_p99:.2f} ms)",
    )
