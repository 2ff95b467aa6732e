"""The benchmarks' own measuring code: tags, sequence checks, pacing, percentiles, the results file,
and the stream benchmark end to end against the in-process baseline and the mock exchange."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from harness.doubles.baseline import BaselineServer, StreamPlan
from harness.doubles.mock_exchange import MockExchangeServer
from harness.perf.fanout import BaselineSource, MockExchangeSource
from harness.perf.fixtures import bench_lock
from harness.perf.loadgen import (
    PacingReport,
    SequenceTracker,
    Window,
    measure_unary,
    merged,
    run_paced,
    run_windowed,
)
from harness.perf.probes import LatencyRecorder
from harness.perf.procwatch import ProcessWatch
from harness.perf.results import PerfRecorder, latest_figures, load
from harness.perf.stream_bench import measure_stream
from harness.tagged_updates import (
    Schedule,
    account_tag,
    format_tag,
    latency_ns,
    parse_tag,
    position_tag,
    tagged_account,
    tagged_position,
)
from implementation.contract.validation import validate_account, validate_position
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

# ------------------------------------------------------------------------------------------ tags


def test_a_tag_round_trips_and_survives_dropped_trailing_zeros() -> None:
    assert format_tag(3, 42) == "3.000000042"
    assert parse_tag("3.000000042") == (3, 42)
    assert parse_tag("7.00000012") == (7, 120)  # "7.000000120" with its trailing zero dropped
    assert parse_tag("0.000000001") == (0, 1)


@pytest.mark.parametrize(
    "text", ["10000.00x", "10000", "-1.000000001", "1.0000000001", "", "abc.def", "1e-05"]
)
def test_values_that_are_not_tags_read_as_none(text: str) -> None:
    assert parse_tag(text) is None, f"expected {text!r} not to read as a tag"


def test_tags_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="seq"):
        format_tag(1, 10**9)
    with pytest.raises(ValueError, match="run"):
        format_tag(-1, 1)


def test_tagged_messages_are_valid_contract_data() -> None:
    account = validate_account(tagged_account(2, 5))
    position = validate_position(tagged_position(2, 6, "ETHUSDT"))
    assert account_tag(account) == (2, 5)
    assert position_tag(position) == (2, 6)
    assert position.symbol == "ETHUSDT"


def test_latency_is_measured_from_the_send_stamp() -> None:
    account = tagged_account(1, 1, now_ns=1_000_000_000)
    assert latency_ns(account, received_ns=1_002_500_000) == 2_500_000
    fresh = tagged_account(1, 1)
    assert 0 <= latency_ns(fresh) < 1_000_000_000


# ------------------------------------------------------------------------------------------ sequences


def test_a_complete_in_order_sequence_has_no_loss() -> None:
    tracker = SequenceTracker()
    for seq in range(1, 1001):
        tracker.observe(seq)
    assert (tracker.received, tracker.lost(1000), tracker.reordered, tracker.duplicates) == (1000, 0, 0, 0)
    assert tracker.in_order


def test_gaps_count_as_lost_and_are_listed() -> None:
    tracker = SequenceTracker()
    for seq in [1, 2, 4, 5, 8]:
        tracker.observe(seq)
    assert tracker.lost() == 3, "expected 3, 6 and 7 lost up to the highest seen"
    assert tracker.missing() == [3, 6, 7]
    assert tracker.lost(10) == 5, "expected 9 and 10 counted lost too when 10 were sent"
    assert tracker.missing(10, limit=4) == [3, 6, 7, 9]
    assert tracker.in_order


def test_late_and_repeated_numbers_are_reordered_and_duplicates() -> None:
    tracker = SequenceTracker()
    for seq in [1, 3, 2, 3, 4, 1]:
        tracker.observe(seq)
    assert tracker.reordered == 1, "expected 2 (after 3) counted as reordered"
    assert tracker.duplicates == 2, "expected the second 3 and the second 1 counted as duplicates"
    assert tracker.lost(4) == 0
    assert not tracker.in_order


def test_a_subscriber_joining_mid_stream_starts_at_its_first_number() -> None:
    tracker = SequenceTracker(first=None)
    assert tracker.lost() == 0
    for seq in [500, 501, 503, 499]:
        tracker.observe(seq)
    assert tracker.first == 500
    assert tracker.lost() == 1 and tracker.missing() == [502]
    assert tracker.before_range == 1


def test_the_bitmap_grows_for_long_runs_and_lost_counts_within_a_prefix() -> None:
    tracker = SequenceTracker()
    for seq in range(1, 200_001):
        if seq % 50_000:
            tracker.observe(seq)
    assert tracker.lost() == 3  # 50000, 100000, 150000 (200000 is the end: not seen, not highest)
    assert tracker.lost(200_000) == 4
    assert tracker.lost(60_000) == 1


# ------------------------------------------------------------------------------------------ pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-6)


def test_the_schedule_is_absolute() -> None:
    schedule = Schedule(100.0)
    assert schedule.due_by(0.0) == 1
    assert schedule.due_by(0.0099) == 1
    assert schedule.due_by(0.01) == 2
    assert schedule.due_by(1.0) == 101
    assert schedule.due_at(101) == pytest.approx(1.0)
    assert Schedule(0).due_by(0.0) > 10**9, "expected rate 0 to make everything due at once"


def test_paced_sending_keeps_the_rate_and_never_drifts() -> None:
    clock = FakeClock()
    sent: list[tuple[int, float]] = []
    report = run_paced(lambda seq: sent.append((seq, clock.now)), rate=1000, count=500, first=11, clock=clock,
                       sleep=clock.sleep)  # fmt: skip
    assert [seq for seq, _ in sent] == list(range(11, 511))
    assert sent[-1][1] == pytest.approx(0.499, abs=1e-5), "expected the 500th update due at 499 ms"
    assert report.sent == 500 and report.max_lag_s < 1e-5


def test_a_late_generator_catches_up_in_a_burst() -> None:
    clock = FakeClock()
    times: list[float] = []

    def slow_sleep(seconds: float) -> None:
        clock.now += 0.05  # every wake-up is 50 ms late

    run_paced(lambda seq: times.append(clock.now), rate=1000, count=200, clock=clock, sleep=slow_sleep)
    assert len(times) == 200
    assert times[-1] <= 0.25, (
        f"expected the 200 updates sent within ~0.2 s despite late wake-ups, got {times[-1]}"
    )


def test_windowed_sending_waits_for_the_receiver_and_gives_up_when_nothing_arrives() -> None:
    window = threading.Semaphore(3)
    sent: list[int] = []
    report = run_windowed(sent.append, count=10, window=window, timeout=0.3)
    assert sent == [1, 2, 3], "expected only the window's worth sent without receipts"
    assert isinstance(report, PacingReport) and report.sent == 3

    window = threading.Semaphore(2)

    def receive_eight() -> None:
        for _ in range(8):
            window.release()

    received = threading.Thread(target=receive_eight)
    received.start()
    report = run_windowed(sent.append, count=10, window=window, timeout=2.0)
    received.join()
    assert report.sent == 10


# ------------------------------------------------------------------------------------------ percentiles


def test_percentiles_of_known_inputs() -> None:
    recorder = LatencyRecorder()
    for microseconds in range(1, 10_001):
        recorder.record_us(microseconds)
    assert recorder.count == 10_000
    assert recorder.p(50) == pytest.approx(5000, rel=0.002)
    assert recorder.p(99) == pytest.approx(9900, rel=0.002)
    assert recorder.p(99.9) == pytest.approx(9990, rel=0.002)
    assert recorder.p_ms(50) == pytest.approx(5.0, rel=0.002)


def test_merged_histograms_give_the_percentiles_of_all_samples_never_an_average() -> None:
    fast, slow = LatencyRecorder("fast"), LatencyRecorder("slow")
    for _ in range(900):
        fast.record_us(100)
    for _ in range(100):
        slow.record_us(10_000)
    total = merged([fast, slow])
    assert total.count == 1000
    assert total.p(50) == pytest.approx(100, rel=0.002)
    assert total.p(95) == pytest.approx(10_000, rel=0.002), "expected p95 to fall among the slow samples"
    assert fast.count == 900, "expected merging to leave its inputs unchanged"


def test_unary_measurement_interleaves_targets_and_skips_warm_up() -> None:
    order: list[str] = []
    recorders = measure_unary(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, count=5, warmup=2, block=2
    )
    assert order == ["a", "a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a", "b"]
    assert recorders["a"].count == 5 and recorders["b"].count == 5


# ------------------------------------------------------------------------------------------ results file


class Sink:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, str]] = []

    def record(self, name: str, value: float, unit: str = "") -> None:
        self.seen.append((name, value, unit))


def test_figures_reach_the_metrics_and_merge_into_the_results_file(tmp_path: Path) -> None:
    path = tmp_path / "perf-results.json"
    assert load(path)["figures"] == {}
    sink = Sink()
    first = PerfRecorder(sink, path, test="t1", scenario_ids=["6.1.1.a"], mode="quick")
    assert first.record("get_account_p50_ms", 0.5, "ms") == 0.5
    first.record_ratio("get_account_p50_ratio", 0.6, 0.5)
    first.detail("calls", 2000)
    first.flush()
    second = PerfRecorder(sink, path, test="t2", scenario_ids=["6.1.2.a"], mode="full")
    second.record("stream_msgs_per_s", 9000, "msg/s")
    second.record("get_account_p50_ms", 0.7, "ms")
    second.flush()

    data = json.loads(path.read_text())
    assert data["figures"]["get_account_p50_ms"]["value"] == 0.7, "expected the latest value to win"
    assert data["figures"]["get_account_p50_ratio"]["value"] == pytest.approx(1.2)
    assert data["figures"]["stream_msgs_per_s"]["scenario_ids"] == ["6.1.2.a"]
    assert data["details"]["t1"]["calls"] == 2000 and data["details"]["t2"]["mode"] == "full"
    assert data["figures"]["stream_msgs_per_s"]["environment"]["cpus"] == (os.cpu_count() or 1)
    assert ("get_account_p50_ms", 0.5, "ms") in sink.seen
    assert not list(tmp_path.glob("*.tmp")), "expected no temporary file left behind"
    assert latest_figures(path)["stream_msgs_per_s"]["value"] == 9000
    assert latest_figures(path, prefer_mode="quick")["get_account_p50_ms"]["value"] == 0.5, (
        "expected the quick figure to win when quick is preferred"
    )
    assert latest_figures(tmp_path / "absent.json") == {}


# ------------------------------------------------------------------------------------------ process watch


def test_process_watch_reports_cpu_and_memory_of_a_process() -> None:
    with ProcessWatch(os.getpid(), interval=0.05) as watch:
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            sum(range(1000))
        stats = watch.stop()
    assert stats.cpu_avg_pct > 20, f"expected a busy loop to show CPU use, got {stats.cpu_avg_pct:.1f} %"
    assert stats.rss_end_mb > 1 and stats.threads_start >= 1 and stats.samples >= 3


# ------------------------------------------------------------------------------------------ end to end


def test_the_baseline_answers_unary_calls_and_paced_streams() -> None:
    with BaselineServer() as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExchangeServiceStub(channel)
        assert validate_account(stub.GetAccount(pb.GetAccountRequest(), timeout=5))
        assert len(stub.GetPositions(pb.GetPositionsRequest(), timeout=5).positions) == 2
        plan = StreamPlan(count=20, rate=200, run=4)
        started = time.perf_counter()
        tags = [
            account_tag(a)
            for a in stub.SubscribeAccount(pb.SubscribeAccountRequest(), metadata=plan.metadata())
        ]
        elapsed = time.perf_counter() - started
    assert tags == [(4, seq) for seq in range(1, 21)]
    assert elapsed >= 0.09, f"expected 20 updates at 200/s to take ~0.095 s, took {elapsed:.3f} s"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "worker-process"])
async def test_stream_measurement_of_the_baseline_sees_every_update(isolated: bool) -> None:
    with BaselineServer() as server:
        run = await measure_stream(
            server.address, BaselineSource(), StreamPlan(count=300, run=2), subscribers=3, isolated=isolated
        )
    assert (run.received, run.lost, run.reordered) == (900, 0, 0), run.problems
    assert run.statuses == {"complete": 3}
    assert run.latency.count == 900 and run.deliveries_per_s > 0 and run.client_cpu_s > 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "worker-process"])
async def test_stream_measurement_through_the_mock_exchange_primes_then_paces(isolated: bool) -> None:
    with MockExchangeServer() as mock:
        source = MockExchangeSource(mock)
        paced = await measure_stream(
            mock.address, source, StreamPlan(count=100, rate=1000, run=5), subscribers=3, isolated=isolated
        )
        windowed = await measure_stream(
            mock.address, source, StreamPlan(count=500, run=6), windowed=True, isolated=isolated
        )
    assert (paced.received, paced.lost) == (300, 0), paced.problems
    assert paced.pacing is not None and paced.pacing.sent == 100
    assert (windowed.received, windowed.lost) == (500, 0), windowed.problems


class DroppingSource(MockExchangeSource):
    """Skips every tenth update: the measurement must report each one as lost."""

    async def generate(
        self, plan: StreamPlan, window: Window | None, stop: threading.Event
    ) -> PacingReport | None:
        def send(seq: int) -> None:
            if seq % 10:
                self.mock.trigger_account_update(tagged_account(plan.run, seq))

        return run_paced(send, rate=0, count=plan.count, stop=stop)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_stream_measurement_reports_lost_updates() -> None:
    with MockExchangeServer() as mock:
        run = await measure_stream(
            mock.address, DroppingSource(mock), StreamPlan(count=50, run=7), subscribers=2, timeout=1.0,
            isolated=False,
        )  # fmt: skip
    assert run.lost == 10, f"expected 5 lost updates x 2 subscribers, got {run.lost}"
    assert "lost (first missing [10, 20, 30, 40, 50])" in run.problems[0]


def test_the_benchmark_lock_lets_one_benchmark_measure_at_a_time(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    with bench_lock(lock, wait_s=1.0) as first:
        started = time.monotonic()
        with bench_lock(lock, wait_s=0.3) as second:
            waited = time.monotonic() - started
    assert first and not second, f"expected the second holder to give up, got first={first} second={second}"
    assert waited >= 0.3, f"expected the second holder to wait 0.3 s first, waited {waited:.2f} s"
    with bench_lock(lock, wait_s=0.3) as again:
        assert again, "expected the lock free again once released"
