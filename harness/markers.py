"""The suite's markers: a test's scenario IDs (`@pytest.mark.scenario`), its spec level, the
capabilities it needs; registered once and read by everything that selects, judges or reports."""

from __future__ import annotations

import pytest

LEVEL_MARKERS = {
    "unit": "spec level 1: one component in isolation, no network I/O",
    "integration": "spec level 2: components over real loopback gRPC",
    "e2e": "spec level 3: the programs running as processes",
    "perf": "spec level 4: benchmarks and load (quick form by default, full with -m perf)",
    "soak": "spec §7: long stability run (needs SOAK_TEST=1)",
}
OTHER_MARKERS = (
    "scenario(*ids): the spec scenario IDs (specs/scenarios.yaml) this test verifies",
    "requires(*capabilities): SUT capabilities the test needs (not applicable otherwise)",
    "perf_long: a benchmark that runs only when perf is asked for (-m perf), not in the default run",
)


def register_markers(config: pytest.Config) -> None:
    for name, help_text in LEVEL_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    for line in OTHER_MARKERS:
        config.addinivalue_line("markers", line)


def scenario_ids(item: pytest.Item) -> list[str]:
    ids: list[str] = []
    for mark in item.iter_markers("scenario"):
        ids.extend(str(arg) for arg in mark.args)
    return ids


def item_levels(item: pytest.Item) -> list[str]:
    return [name for name in LEVEL_MARKERS if item.get_closest_marker(name) is not None]
