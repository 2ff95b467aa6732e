"""The §6 performance level (its fixtures come with the harness plugin: harness/perf/fixtures.py).

Every test here runs in a quick form in the default run and at full length with ``-m perf``
(the ``run_mode`` fixture says which). The load test's timeout follows its duration
(--load-duration, 20 s quick / 300 s full), so a longer run is never cut short.
"""

from __future__ import annotations

import pytest

from harness.options import load_duration_s

LOAD_TIMEOUT_MARGIN_S = 180.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    timeout = load_duration_s(config) + LOAD_TIMEOUT_MARGIN_S
    for item in items:
        if item.path.name == "test_load.py" and item.path.parent.name == "perf":
            item.add_marker(pytest.mark.timeout(timeout), append=False)
