"""The order of a session of the project's tests around the fault matrix.

The fault matrix (tests/fault_matrix.py) is some 200 runs of the suite, six at a time, that mostly
wait on the programs they start: run on their own they leave the machine half idle. So a session
goes in four parts:

1. alone, first: the scenarios the catalogue marks `exclusive` (they judge timing or resources, or
   stop processes) and the project tests marked `exclusive` (they run many programs at once
   themselves), nothing beside them;
2. beside the matrix: every other test, while the matrix's shared runs go on in the background
   (they start with this part's first test);
3. the tests of the shared runs, in the order the runs started, each waiting for its own;
4. alone, last: the fault runs that judge time, then the controls (after the scenarios whose
   verdicts they may reuse, and the timed one after every other run).

Within a part the order is pytest-randomly's (a stable sort keeps it).
"""

from __future__ import annotations

import pytest

from harness.schedule import is_exclusive
from tests.fault_matrix import (
    CONTROL,
    TIMED_CONTROL,
    longest_first,
    matrix_run,
    runs_alone,
    start_shared_runs,
)

ALONE_FIRST, BESIDE_THE_MATRIX, SHARED_RUNS, ALONE_LAST = range(4)
_LOOKED = pytest.StashKey[bool]()  # the session's tests were looked at for the matrix's


def part(item: pytest.Item) -> int:
    """The part of the session `item` runs in."""
    run = matrix_run(item)
    if run is None:
        if item.get_closest_marker("exclusive") is not None or is_exclusive(item):
            return ALONE_FIRST
        return BESIDE_THE_MATRIX
    if run in (CONTROL, TIMED_CONTROL) or runs_alone(run):
        return ALONE_LAST
    return SHARED_RUNS


def order(items: list[pytest.Item]) -> None:
    """Sort `items` into the session's parts, in place."""
    runs = [run for item in items if (run := matrix_run(item)) is not None]
    started = {run: index for index, run in enumerate(longest_first(runs))}
    last = {CONTROL: 1, TIMED_CONTROL: 2}

    def key(item: pytest.Item) -> tuple[int, int]:
        where = part(item)
        run = matrix_run(item)
        if where == SHARED_RUNS and run is not None:
            return where, started[run]
        if where == ALONE_LAST and run is not None:
            return where, last.get(run, 0)
        return where, 0

    items.sort(key=key)


def before(item: pytest.Item) -> None:
    """Called before each test: the first one past the first part starts the matrix's shared runs
    (when the session has tests of the matrix)."""
    session = item.session
    if session.config.stash.get(_LOOKED, False) or part(item) == ALONE_FIRST:
        return
    session.config.stash[_LOOKED] = True  # once is enough: later tests find the runs started
    if any(matrix_run(other) is not None for other in session.items):
        start_shared_runs(session)
