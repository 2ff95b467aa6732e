"""Leak probes, latency recorder and throughput counter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest

from harness.perf.probes import (
    LatencyRecorder,
    LeakProbe,
    ResourceSnapshot,
    Throughput,
    assert_no_growth,
    assert_no_growth_async,
)

pytestmark = pytest.mark.timeout(20)


def test_snapshot_of_this_process_counts_threads_fds_and_rss() -> None:
    snapshot = ResourceSnapshot.take()
    assert snapshot.pid == os.getpid()
    assert snapshot.threads == len(snapshot.thread_names) >= 1, snapshot
    assert "MainThread" in snapshot.thread_names
    assert snapshot.os_threads >= snapshot.threads - 1  # dummy threads have no OS thread of their own
    assert snapshot.fds > 0 and snapshot.rss_bytes > 1_000_000
    assert snapshot.tasks == 0, f"expected 0 tasks outside an event loop, got {snapshot.tasks}"


def test_snapshot_of_another_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        snapshot = ResourceSnapshot.take(child.pid)
    finally:
        child.kill()
        child.wait()
    assert snapshot.pid == child.pid
    assert snapshot.threads >= 1 and snapshot.threads == snapshot.os_threads
    assert snapshot.fds >= 3 and snapshot.rss_bytes > 0 and snapshot.tasks == 0


def test_a_thread_that_stays_is_named_in_the_failure() -> None:
    release = threading.Event()
    before = ResourceSnapshot.take()
    extra = threading.Thread(target=release.wait, name="leaky-stream", daemon=True)
    extra.start()
    try:
        with pytest.raises(AssertionError) as failure:
            # no settling: other tests' background threads may end meanwhile and hide the growth
            assert_no_growth(before, ResourceSnapshot.take(), settle_s=0, label="3.2.1.d")
    finally:
        release.set()
        extra.join(5)
    message = str(failure.value)
    assert message.startswith("3.2.1.d: resources grew after 0.0 s to settle"), f"got {message!r}"
    assert f"threads {before.threads} -> {before.threads + 1} (+1, allowed +0)" in message, message
    assert "new threads: leaky-stream" in message, message


def test_growth_that_settles_in_time_passes() -> None:
    before = ResourceSnapshot.take()
    finishing = threading.Thread(target=time.sleep, args=(0.3,), name="finishing")
    finishing.start()
    after = assert_no_growth(before, ResourceSnapshot.take(), settle_s=5.0)
    assert after.threads <= before.threads, f"expected the thread gone, got {after.thread_names}"
    finishing.join()


def test_allowances_and_open_files() -> None:
    before = ResourceSnapshot.take()
    with open(os.devnull, "rb"):
        after = ResourceSnapshot.take()
        assert after.fds == before.fds + 1, f"expected one more fd, got {before.fds} -> {after.fds}"
        with pytest.raises(AssertionError, match=r"open fds \d+ -> \d+ \(\+1, allowed \+0\)"):
            assert_no_growth(before, after, settle_s=0)
        assert_no_growth(before, after, fds=1, settle_s=0)


def test_rss_growth_beyond_the_allowance_fails() -> None:
    before = ResourceSnapshot.take()
    ballast = bytearray(48 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is resident
    try:
        with pytest.raises(AssertionError, match=r"RSS .* MB -> .* MB \(\+\d+\.\d MB, allowed \+10 MB\)"):
            assert_no_growth(before, ResourceSnapshot.take(), rss_mb=10, settle_s=0)
    finally:
        del ballast


@pytest.mark.asyncio
async def test_tasks_are_counted_inside_the_loop_and_named_when_they_stay() -> None:
    release = asyncio.Event()

    async def lingering_subscriber() -> None:
        await release.wait()

    before = ResourceSnapshot.take()
    task = asyncio.create_task(lingering_subscriber())
    after = ResourceSnapshot.take()
    assert after.tasks == before.tasks + 1, f"expected one more task, got {before.tasks} -> {after.tasks}"
    with pytest.raises(AssertionError) as failure:
        await assert_no_growth_async(before, after, settle_s=0.3)
    assert "asyncio tasks" in str(failure.value) and "lingering_subscriber" in str(failure.value), (
        failure.value
    )
    release.set()
    await task
    # only tasks are judged here: threads and fds may change with other tests' background work
    await assert_no_growth_async(before, ResourceSnapshot.take(), threads=50, fds=50, settle_s=2.0)


@pytest.mark.asyncio
async def test_async_check_lets_tasks_finish_while_settling() -> None:
    probe = LeakProbe(label="4.2.1.c")
    probe.start()
    task = asyncio.create_task(asyncio.sleep(0.2))
    await probe.check_async(threads=50, fds=50, settle_s=3.0)
    assert task.done(), "expected the task finished while the probe waited"


def test_leak_probe_needs_a_baseline(leak_probe: LeakProbe) -> None:
    with pytest.raises(RuntimeError, match="call start"):
        leak_probe.check()
    leak_probe.start()
    assert leak_probe.check(threads=50, fds=50, settle_s=1.0).pid == os.getpid()


def test_latency_percentiles_in_microseconds() -> None:
    recorder = LatencyRecorder("get_account")
    for value in range(1, 1001):
        recorder.record_us(value)
    assert recorder.count == 1000
    # 3 significant digits: values are exact to 0.1 %
    assert recorder.p(50) == pytest.approx(500, rel=0.001), recorder.p(50)
    assert recorder.p(99) == pytest.approx(990, rel=0.001), recorder.p(99)
    assert recorder.p(99.9) == pytest.approx(999, rel=0.001), recorder.p(99.9)
    assert recorder.p_ms(50) == pytest.approx(0.5, rel=0.001)
    summary = recorder.summary_ms()
    assert summary["count"] == 1000 and summary["max"] == pytest.approx(1.0, rel=0.001), summary
    assert str(recorder).startswith("get_account: n=1000 p50=0.500 ms"), str(recorder)


def test_latency_units_merge_and_limits() -> None:
    recorder = LatencyRecorder()
    recorder.record_ns(2_000_000)  # 2 ms
    recorder.record_s(0.004)  # 4 ms
    recorder.record_ns(10)  # below 1 µs: counted as 1 µs
    assert recorder.p(100) == pytest.approx(4000, rel=0.001)
    assert recorder.p(0) == 1
    other = LatencyRecorder()
    other.record_s(120)  # beyond 60 s: clamped and counted
    recorder.merge(other)
    assert recorder.count == 4 and recorder.overflows == 1
    assert recorder.max_us == pytest.approx(60_000_000, rel=0.001)
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        recorder.p(101)
    with pytest.raises(ValueError, match="empty: no latency recorded"):
        LatencyRecorder("empty").p(50)


def test_measure_records_the_block() -> None:
    recorder = LatencyRecorder()
    with recorder.measure():
        time.sleep(0.02)
    assert recorder.count == 1
    assert recorder.p(50) >= 19_000, f"expected at least 19 ms, got {recorder.p(50)} µs"


def test_throughput_counts_per_second() -> None:
    meter = Throughput("updates")
    assert meter.rate == 0.0 and meter.elapsed_s == 0.0
    meter.start()
    for _ in range(100):
        meter.add()
    time.sleep(0.2)
    meter.stop()
    elapsed = meter.elapsed_s
    assert 0.19 <= elapsed < 2.0, f"expected about 0.2 s, got {elapsed}"
    assert meter.count == 100 and meter.rate == pytest.approx(100 / elapsed)
    time.sleep(0.05)
    assert meter.elapsed_s == elapsed, "expected the clock stopped by stop()"
    assert str(meter).startswith("updates: 100 in ")
