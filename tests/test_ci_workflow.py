"""The CI workflow stays runnable: every job's timeout fits its runner (GitHub-hosted jobs stop at
6 h, self-hosted ones at 5 days), and the scheduled soak is the accelerated day of events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.perf.durations import parse_duration

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "ci.yml"
HOSTED_LIMIT_MIN = 360
SELF_HOSTED_LIMIT_MIN = 5 * 24 * 60


def jobs() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return dict(data["jobs"])


def self_hosted(job: dict[str, Any]) -> bool:
    runs_on = job["runs-on"]
    return "self-hosted" in (runs_on if isinstance(runs_on, list) else [runs_on])


def test_every_timeout_fits_its_runner() -> None:
    for name, job in jobs().items():
        limit = SELF_HOSTED_LIMIT_MIN if self_hosted(job) else HOSTED_LIMIT_MIN
        minutes = job.get("timeout-minutes")
        assert isinstance(minutes, int) and 0 < minutes <= limit, (
            f"job {name}: expected timeout-minutes within 1..{limit} for its runner, got {minutes!r}"
        )


def test_the_scheduled_soak_carries_a_day_of_events_within_its_timeout() -> None:
    job = jobs()["soak"]
    assert not self_hosted(job) and "schedule" in job["if"]
    env = job["env"]
    # the defaults behind the `inputs || default` expressions are what a scheduled run gets
    duration_s = parse_duration(env["SOAK_DURATION"].split("'")[1])
    speedup = float(env["SOAK_SPEEDUP"].split("'")[1])
    assert duration_s * speedup >= 24 * 3600, (
        f"expected 24 h of events, got {duration_s * speedup / 3600:.1f} h"
    )
    assert duration_s / 60 + 30 <= job["timeout-minutes"], "expected the soak plus set-up within the timeout"


def test_the_real_time_soak_runs_only_on_a_self_hosted_runner() -> None:
    job = jobs()["soak-real-time"]
    assert self_hosted(job) and "soak" in job["runs-on"]
    assert "schedule" not in job["if"]
    assert job["env"]["SOAK_SPEEDUP"] == "1"
