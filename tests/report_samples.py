"""A run's results with every kind of data the HTML report charts, written into a report folder:
figures, the perf details file (latency percentiles, the memory series, the scaling points) and a
soak run's snapshots. Shared by the report's chart and browser tests."""

from __future__ import annotations

import json
from pathlib import Path

from harness import catalogue as catalogue_module
from harness.report.results import Metric, RunResults, TestOutcome
from harness.report.writer import write_reports

LATENCY = "specs/perf/test_latency.py::test_get_account_latency_p50_and_p99_over_loopback"
MEMORY = "specs/perf/test_memory.py::test_streaming_grows_neither_memory_nor_threads_tasks_or_fds"
SCALING = "specs/perf/test_scaling.py::test_scaling_curve_of_subscribers_against_the_relay_baseline"
SOAK = "specs/soak/test_soak.py::test_soak_runs_its_duration_with_restarts_and_stays_stable"


def _points(scale: float) -> list[list[float]]:
    ladder = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)
    return [[q, round(scale * (0.4 + q / 60 + (q > 99) * (q - 99) * 2), 3)] for q in ladder]


def _target(n: int, cost: float) -> dict[str, float]:
    return {"deliveries_per_s": 10.0 * n, "p50_ms": 1.0, "p99_ms": 2.0 + n / 500, "cpu_us_per_delivery": cost,
            "rss_kb_per_subscriber": 24.0, "lost": 0}  # fmt: skip


def write_sample_run(directory: Path) -> RunResults:
    """Write the reports of a sample run into `directory`; return its results."""
    directory.mkdir(parents=True, exist_ok=True)
    results = RunResults(sut_name="sample")
    statuses = ("passed", "failed", "not-applicable", "known-failure")
    for index, scenario in enumerate(s for s in catalogue_module.load().scenarios if s.kind != "criterion"):
        results.add_outcome(TestOutcome(f"t{index}", [scenario.id], statuses[index % 4], "", 0.1))
    for node in (LATENCY, MEMORY, SCALING, SOAK):
        results.add_outcome(TestOutcome(node, [], "passed", "", 1.0))
    for rate, (sut, bare, relay) in {100: (1.5e3, 1.5e3, 1.5e3), 1000: (1.5e4, 1.5e4, 1.5e4),
                                     10000: (3.0e4, 4.0e4, 3.2e4)}.items():  # fmt: skip
        for prefix, value in (("", sut), ("baseline_", bare), ("relay_", relay)):
            results.add_metric(
                Metric(f"{prefix}fanout_{rate}_deliveries_per_s", value, "msg/s", ["6.1.2.x1"], "x")
            )
            results.add_metric(
                Metric(f"{prefix}fanout_{rate}_p99_ms", rate / 500 + 1, "ms", ["6.1.2.x1"], "x")
            )
    snapshots = directory / "soak-snapshots.jsonl"
    rows = [
        {"t_s": 60.0 * i, "t_equiv_s": 1440.0 * i, "speedup": 24.0, "server_rss_mb": 60 + i % 2,
         "client_rss_mb": 85.0, "server_threads": 12, "client_tasks": 26, "server_fds": 25, "client_fds": 30,
         "latency_p99_ms": 4.0 + i % 3, "restart_events": [{"t_s": 60.0 * i - 20, "what": "live_server"}]}
        for i in range(1, 11)
    ]  # fmt: skip
    snapshots.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    details = {
        LATENCY: {"calls": 10000, "sut_percentiles_ms": _points(1.2), "baseline_percentiles_ms": _points(1.0)},
        MEMORY: {"series": [{"t_s": float(t), "server_rss_mb": 60.0 + t / 100, "server_threads": 12,
                             "server_fds": 25, "client_rss_mb": 80.0, "client_tasks": 20} for t in range(10)]},
        SCALING: {"idle_points": [5000], "scaling_points": [
            {"subscribers": n, "connector": _target(n, 90.0), "relay": _target(n, 60.0)} for n in (1, 10, 100, 1000)
        ] + [{"subscribers": 5000, "idle": True, "connector": _target(5000, 0), "relay": _target(5000, 0)}]},
        SOAK: {"snapshots_file": str(snapshots)},
    }  # fmt: skip
    (directory / "perf-results.json").write_text(json.dumps({"format": 1, "figures": {}, "details": details}))
    write_reports(results, catalogue_module.load(), directory)
    return results
