"""Code coverage of the reference implementation in a run: the §10 figure, and benchmarks kept clean.

Coverage is measured when the run asks for it (``--cov``, as ``./test`` does). The programs run as
subprocesses, so coverage follows them through its ``patch = subprocess`` setting (pyproject.toml),
which hands its configuration to children in ``COVERAGE_PROCESS_CONFIG``.

A tracer slows the code it watches, so benchmarks and soak runs measure without one: for those
tests the in-process collector is paused and programs they start get no coverage configuration.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

COVERAGE_ENV = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
UNINSTRUMENTED_LEVELS = ("perf", "soak")


def is_uninstrumented(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(level) is not None for level in UNINSTRUMENTED_LEVELS)


@contextmanager
def uninstrumented() -> Iterator[None]:
    """Pause coverage in this process and keep it out of programs started meanwhile."""
    try:
        import coverage
    except ImportError:  # pragma: no cover - coverage is a test dependency
        yield
        return
    current = coverage.Coverage.current()
    # no public "is running" accessor
    collector = current if current is not None and current._started else None
    saved = {name: os.environ.pop(name) for name in COVERAGE_ENV if name in os.environ}
    if collector is not None:
        collector.stop()
    try:
        yield
    finally:
        if collector is not None:
            collector.start()
        # after start(), which writes its configuration anew with paths resolved in the current
        # folder (a test may have moved it): children keep writing where the run combines
        os.environ.update(saved)


def measured_total(config: pytest.Config) -> float | None:
    """The run's total line coverage (%), as pytest-cov computed it after the tests; None if not measured."""
    plugin = config.pluginmanager.getplugin("_cov")
    total = getattr(plugin, "cov_total", None)
    return float(total) if total is not None else None
