"""specs/targets.py: a timed target's miss is a TimingMiss (the host may explain it) unless the
caller shows the host could measure it, e.g. a bare baseline met the target in the same run."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness.outcomes import CHECK_KEY
from harness.verdicts import Verdicts
from specs.targets import check_target


def _checked(**host: str) -> dict[str, Any]:
    item = SimpleNamespace(user_properties=[])
    verdicts = Verdicts(cast(pytest.Item, item), ["6.1.1.a"], {})
    check_target(verdicts, "6.1.1.a", False, "GetAccount p50 below 2.0 ms", "14.215 ms", **host)
    [(key, record)] = item.user_properties
    assert key == CHECK_KEY
    return cast(dict[str, Any], json.loads(record))


def test_a_timed_miss_is_left_to_the_host_watch() -> None:
    record = _checked()
    assert record["status"] == "failed" and record["timing_miss"] is True, record


def test_a_miss_the_host_plainly_could_measure_stands_on_any_host() -> None:
    record = _checked(host_met_it="the bare baseline met it in the same run")
    assert record["status"] == "failed" and record["timing_miss"] is False, record
    assert "expected GetAccount p50 below 2.0 ms, got 14.215 ms" in record["reason"]
    assert "the bare baseline met it in the same run" in record["reason"]
