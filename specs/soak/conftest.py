"""The §7.1 soak level (its fixtures come with the harness plugin: harness/perf/fixtures.py). Its timeout follows
--soak-duration / SOAK_DURATION, so a 24 h run is never cut short and a 10 min one never hangs."""

from __future__ import annotations

import pytest

from harness.options import soak_speedup
from harness.perf.durations import parse_duration

SOAK_TIMEOUT_MARGIN_S = 600.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        duration = parse_duration(str(config.getoption("soak_duration")))
    except ValueError as error:
        raise pytest.UsageError(f"--soak-duration: {error}") from None
    soak_speedup(config)  # a bad SOAK_SPEEDUP stops the run here, naming the variable
    for item in items:
        if item.path.name == "test_soak.py" and item.path.parent.name == "soak":
            item.add_marker(pytest.mark.timeout(duration + SOAK_TIMEOUT_MARGIN_S), append=False)
