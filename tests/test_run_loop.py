"""The loop a user lives in: exclusive scenarios run alone after the parallel ones (harness.schedule),
--rerun-failed, --list and --explain, and a hang contained as HUNG (harness.budget)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import catalogue, cli

ROOT = Path(__file__).resolve().parent.parent
PYTESTER_INI = (
    "[pytest]\naddopts = -p no:randomly -p no:cacheprovider\nasyncio_default_fixture_loop_scope = function\n"
)

TIMED_TESTS = """
import json, os, time
import pytest

pytestmark = pytest.mark.unit
LOG = os.path.join(os.path.dirname(__file__), "intervals.jsonl")

def _spend(name):
    start = time.time()
    time.sleep(0.6)
    with open(LOG, "a") as out:
        out.write(json.dumps({"name": name, "start": start, "end": time.time()}) + "\\n")

@pytest.mark.scenario("3.2.1.a")
def test_alone_a(): _spend("alone_a")

@pytest.mark.scenario("3.2.1.b")
def test_alone_b(): _spend("alone_b")

@pytest.mark.scenario("4.3.1.a")
def test_shared_a(): _spend("shared_a")

@pytest.mark.scenario("4.3.1.b")
def test_shared_b(): _spend("shared_b")

@pytest.mark.scenario("4.3.1.c")
def test_shared_c(): _spend("shared_c")

@pytest.mark.scenario("3.1.1.a")
def test_shared_d(): _spend("shared_d")
"""


def test_the_catalogue_marks_what_must_run_alone() -> None:
    marked = {s.id for s in catalogue.load().testable() if s.exclusive}
    # stops processes, judges timing or resources: never beside another test
    for sid in ("3.2.1.x1", "4.2.1.c", "4.2.1.ac3", "4.2.1.x6", "4.2.1.x23", "4.2.1.x27", "4.2.1.x29"):
        assert sid in marked, f"expected {sid} to run alone (exclusive: true)"
    assert all(s.exclusive for s in catalogue.load().testable() if s.level == "perf"), (
        "expected every §6 benchmark to run alone"
    )
    assert "4.2.1.a" not in marked and "4.3.1.a" not in marked


@pytest.mark.timeout(120)
def test_exclusive_tests_run_alone_after_the_parallel_ones(pytester: pytest.Pytester) -> None:
    assert catalogue.load().get("3.2.1.a").exclusive and not catalogue.load().get("4.3.1.a").exclusive  # type: ignore[union-attr]
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_spec=TIMED_TESTS)
    result = pytester.runpytest_subprocess("-n", "3", "--report-dir", "out")
    result.assert_outcomes(passed=6)
    intervals = [json.loads(line) for line in (pytester.path / "intervals.jsonl").read_text().splitlines()]
    alone = [i for i in intervals if i["name"].startswith("alone")]
    shared = [i for i in intervals if i["name"].startswith("shared")]
    assert len(alone) == 2 and len(shared) == 4
    for one in alone:
        beside = [
            o["name"]
            for o in intervals
            if o is not one and o["start"] < one["end"] and one["start"] < o["end"]
        ]
        assert not beside, f"expected {one['name']} to run alone, it ran beside {beside}"
    assert min(a["start"] for a in alone) >= max(s["end"] for s in shared), "expected the exclusive ones last"
    overlapping = any(
        a is not b and a["start"] < b["end"] and b["start"] < a["end"] for a in shared for b in shared
    )
    assert overlapping, f"expected the other tests to run in parallel, got {shared}"
    report = json.loads((pytester.path / "out" / "conformance-report.json").read_text())
    ran = {row["id"]: row["status"] for row in report["scenarios"] if row["status"] != "not-run"}
    assert ran == dict.fromkeys(["3.1.1.a", "3.2.1.a", "3.2.1.b", "4.3.1.a", "4.3.1.b", "4.3.1.c"], "passed")


RERUN_TESTS = """
import os
import pytest

pytestmark = pytest.mark.unit
FAIL = os.environ.get("FAIL_IDS", "").split(",")

@pytest.mark.scenario("3.2.1.a")
def test_a(): assert "3.2.1.a" not in FAIL

@pytest.mark.scenario("3.2.1.b")
def test_b(): assert "3.2.1.b" not in FAIL

@pytest.mark.scenario("3.2.1.c", "3.2.1.d")
def test_cd(): assert "3.2.1.c" not in FAIL

@pytest.mark.scenario("4.3.1.a")
def test_mock(): assert "4.3.1.a" not in FAIL
"""


@pytest.mark.timeout(120)
def test_rerun_failed_runs_exactly_the_ids_that_did_not_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_spec=RERUN_TESTS)
    monkeypatch.setenv("FAIL_IDS", "3.2.1.b,4.3.1.a")
    first = pytester.runpytest_subprocess("--report-dir", "first")
    first.assert_outcomes(passed=2, failed=2)
    monkeypatch.setenv("FAIL_IDS", "")
    again = pytester.runpytest_subprocess(
        "--rerun-failed", "first/conformance-report.json", "--report-dir", "again"
    )
    again.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "again" / "conformance-report.json").read_text())
    ran = {row["id"]: row["status"] for row in report["scenarios"] if row["status"] != "not-run"}
    assert ran == {"3.2.1.b": "passed", "4.3.1.a": "passed"}, f"expected exactly the failed IDs, got {ran}"
    # a test that judges several IDs together failed them all: it reruns, for both
    monkeypatch.setenv("FAIL_IDS", "3.2.1.c")
    pytester.runpytest_subprocess("--report-dir", "third").assert_outcomes(passed=3, failed=1)
    rerun = pytester.runpytest_subprocess(
        "--rerun-failed", "third/conformance-report.json", "--report-dir", "fourth"
    )
    rerun.assert_outcomes(failed=1)
    report = json.loads((pytester.path / "fourth" / "conformance-report.json").read_text())
    ran = {row["id"]: row["status"] for row in report["scenarios"] if row["status"] != "not-run"}
    assert ran == {"3.2.1.c": "failed", "3.2.1.d": "failed"}, f"expected 3.2.1.c and d, got {ran}"


def test_rerun_failed_refuses_a_file_that_is_not_a_report(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_spec=RERUN_TESTS)
    (pytester.path / "junk.json").write_text("[]")
    result = pytester.runpytest("--rerun-failed", "junk.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rerun-failed*not a conformance report*"])


@pytest.mark.timeout(120)
def test_list_and_explain_show_the_catalogue(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_spec=RERUN_TESTS)
    listed = pytester.runpytest("--list")
    assert listed.ret == 0
    listed.stdout.fnmatch_lines(
        ["ID*LEVEL*RULES*NEEDS*TITLE", "3.2.1.a*unit*server start binds its port*", "*5 scenario(s)*"]
    )
    explained = pytester.runpytest("--explain", "3.2.1.b")
    assert explained.ret == 0
    rule = catalogue.load().get("3.2.1.b").rules[0]  # type: ignore[union-attr]
    explained.stdout.fnmatch_lines(
        [
            "3.2.1.b*server stop releases its port*",
            "What it does (its criterion):",
            f"  {rule}: *",
            "*test_spec.py::test_b",
        ]
    )
    unknown = pytester.runpytest("--explain", "9.9.9")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR


def test_the_command_runs_in_parallel_unless_told_otherwise(tmp_path: Path) -> None:
    assert cli.parallel_args([]) == ["-n", str(cli.WORKERS)]
    for serial in (
        ["-n", "0"],
        ["-n4"],
        ["--attach"],
        ["--list"],
        ["--explain", "4.2.1.a"],
        ["-p", "no:xdist"],
    ):
        assert cli.parallel_args(serial) == [], f"expected {serial} to choose its own workers"
    assert "-n" in cli.pytest_args(["--scenario", "4.2"], tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_planted_hang_is_hung_and_the_rest_of_the_run_goes_on(tmp_path: Path) -> None:
    from specs.faulty.manifests import write_manifest

    manifest = write_manifest("get-positions-never-answers", tmp_path)
    # 4.2.2.ac2 waits on a GetPositions the fault never answers (its deadline: 5 s) past a budget of 4 s
    command = [
        sys.executable, "-m", "harness.cli", "--sut", str(manifest), "--time-budget", "4", "-n", "0",
        "--report-dir", str(tmp_path / "out"), "--basetemp", str(tmp_path / "tmp"),
        "--scenario", "4.2.2.ac2", "--scenario", "4.2.2.b", "--scenario", "4.2.1.x7", "--scenario", "4.3",
        "-p", "randomly", "-p", "no:cacheprovider",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode == 1, (
        f"expected exit status 1 (a scenario hung), got {done.returncode}: {done.stdout[-3000:]}"
    )
    report = json.loads((tmp_path / "out" / "conformance-report.json").read_text())
    ran = {row["id"]: row for row in report["scenarios"] if row["status"] != "not-run"}
    assert ran["4.2.2.ac2"]["status"] == "hung", f"expected 4.2.2.ac2 HUNG, got {ran['4.2.2.ac2']}"
    assert "time budget of 4 s" in ran["4.2.2.ac2"]["reason"]
    others = {sid: row["status"] for sid, row in ran.items() if sid != "4.2.2.ac2"}
    assert others == dict.fromkeys(["4.2.1.x7", "4.2.2.b", "4.3.1.a", "4.3.1.b", "4.3.1.c"], "passed"), others
    hung = [t for t in report["tests"] if t["outcome"] == "hung"]
    assert "program logs" in hung[0]["figures"] and "exchange_connector" in hung[0]["figures"]["program logs"]
    markdown = (tmp_path / "out" / "conformance-report.md").read_text()
    assert "HUNG" in markdown and "4.2.2.ac2" in markdown
    html = (tmp_path / "out" / "conformance-report.html").read_text()
    assert ">hung<" in html, "expected the HTML report to mark the hang apart from a failure"
    assert "1 scenario(s) HUNG" in done.stdout, done.stdout[-2000:]
    assert "HUNG         4.2.2.ac2" in done.stdout, done.stdout[-2000:]
    # its connector was stopped: no program the run started (they run in folders under its basetemp) is left
    left = [pid for pid, cwd in _process_folders().items() if cwd.is_relative_to(tmp_path / "tmp")]
    assert not left, f"expected no program of the run left running, got pids {left}"


def _process_folders() -> dict[int, Path]:
    found: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cwd").resolve(strict=True)
            except OSError:
                continue
    return found


FIXTURE_HANG_TESTS = """
import time
import pytest

pytestmark = pytest.mark.unit

@pytest.fixture
def wedged_start():
    time.sleep(30)  # a program that never becomes ready, past the budget
    yield

@pytest.fixture
def wedged_stop():
    yield
    time.sleep(30)  # a program that never stops, past the budget

@pytest.mark.scenario("3.2.1.a")
def test_start(wedged_start): pass

@pytest.mark.scenario("3.2.1.b")
def test_stop(wedged_stop): pass

@pytest.mark.scenario("4.3.1.a")
def test_fine(): pass
"""


@pytest.mark.timeout(120)
def test_a_hang_in_set_up_or_tear_down_is_hung_too(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_spec=FIXTURE_HANG_TESTS)
    result = pytester.runpytest_subprocess("--time-budget", "1", "--report-dir", "out")
    assert result.ret == 1, result.stdout.str()[-2000:]
    report = json.loads((pytester.path / "out" / "conformance-report.json").read_text())
    ran = {row["id"]: row for row in report["scenarios"] if row["status"] != "not-run"}
    assert ran["3.2.1.a"]["status"] == "hung", f"expected a set-up past its budget HUNG, got {ran['3.2.1.a']}"
    assert "while setting up" in ran["3.2.1.a"]["reason"], ran["3.2.1.a"]["reason"]
    assert ran["3.2.1.b"]["status"] == "hung", (
        f"expected a tear-down past its budget HUNG, got {ran['3.2.1.b']}"
    )
    assert "while tearing down" in ran["3.2.1.b"]["reason"], ran["3.2.1.b"]["reason"]
    assert ran["4.3.1.a"]["status"] == "passed", (
        f"expected the next scenario its own outcome, got {ran['4.3.1.a']}"
    )
