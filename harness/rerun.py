"""--rerun-failed REPORT.json: the scenario IDs that did not pass in an earlier conformance report."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.outcomes import Status
from harness.report import compare

RERUN = frozenset({Status.FAILED, Status.ERROR, Status.STALE, Status.INCONCLUSIVE, Status.HUNG})
RERUN_KEY = pytest.StashKey[frozenset[str]]()


def not_passed(path: Path) -> frozenset[str]:
    """The IDs of the report's scenarios that failed, broke, went stale, were inconclusive or hung."""
    try:
        data = compare.load(path)
    except ValueError as error:
        raise pytest.UsageError(f"--rerun-failed: {error}") from None
    wanted = {status.value for status in RERUN}
    return frozenset(str(s["id"]) for s in data["scenarios"] if str(s.get("status")) in wanted)


def configure(config: pytest.Config) -> None:
    path = config.getoption("rerun_failed")
    if path is not None:
        config.stash[RERUN_KEY] = not_passed(Path(path))


def chosen(config: pytest.Config) -> frozenset[str] | None:
    """The IDs to rerun, or None when the run is not a rerun."""
    return config.stash.get(RERUN_KEY, None)


__all__ = ["RERUN", "chosen", "configure", "not_passed"]
