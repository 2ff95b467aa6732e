"""harness.perf.fanout.combine: blocks of one fan-out point measured apart add up to one run."""

from __future__ import annotations

from array import array

from harness.doubles.baseline import StreamPlan
from harness.perf.fanout import SubscriberReport, combine, summarise
from harness.perf.loadgen import PacingReport


def _report(
    latencies_us: list[int], first_sent_ns: int, last_received_ns: int, status: str = "complete"
) -> SubscriberReport:
    return SubscriberReport(
        status=status, details="", received=len(latencies_us), lost=0, reordered=0, duplicates=0, missing=[],
        first_sent_ns=first_sent_ns, last_received_ns=last_received_ns,
        latencies_us=array("q", latencies_us).tobytes(),
    )  # fmt: skip


def test_blocks_add_their_counts_latencies_and_own_times_not_the_gap_between() -> None:
    plan = StreamPlan(count=2, rate=100.0)
    first = summarise(
        [_report([1_000, 2_000], 0, 1_000_000_000), _report([3_000, 4_000], 0, 1_000_000_000)],
        plan, PacingReport(2, 0.02, 0.001), 0.5,
    )  # fmt: skip
    # the second block starts a minute later: the gap must not count as delivery time
    second = summarise(
        [_report([5_000, 6_000], 60_000_000_000, 62_000_000_000, "RESOURCE_EXHAUSTED")],
        plan, PacingReport(2, 0.03, 0.004), 0.25,
    )  # fmt: skip
    run = combine([first, second])
    assert (run.received, run.planned, run.lost) == (6, 4, 0)
    assert run.elapsed_s == 3.0
    assert run.deliveries_per_s == 2.0
    assert run.latency.count == 6
    assert run.latency.p(100) >= 6_000 > run.latency.p(50)
    assert run.statuses == {"complete": 2, "RESOURCE_EXHAUSTED": 1}
    assert run.client_cpu_s == 0.75
    assert run.pacing == PacingReport(4, 0.05, 0.004)
    assert len(run.reports) == 3
