"""The fault matrix: one run of the suite per fault of specs/faulty/faults.yaml, against the fault's
manifest, and the reference's runs of the same selections (the controls), a pool of them at a time.

tests/test_fault_catching.py judges the runs; this module makes them. The runs go six at a time
(one under pytest-xdist, whose workers already share the machine), except a run whose selections
judge time (§6, or a timing-bounded scenario): a second run beside it would be a busy neighbour, and
its verdict INCONCLUSIVE. Such a run goes alone, once the runs beside it end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.markers import scenario_ids
from harness.stash import MANIFEST_KEY
from harness.sut.manifest import DEFAULT_MANIFEST, load_manifest
from specs.faulty.catalogue import is_timed, load_faults
from specs.faulty.manifests import write_manifest
from specs.faulty.runs import SuiteRun, run_suite, suite_env

FAULTS = load_faults()
CONTROL, TIMED_CONTROL = "control", "control-timed"
SPECS = Path(__file__).resolve().parents[1] / "specs"
RUN_TIMEOUT_S = 300.0
PARALLEL_RUNS = 6  # the runs wait on programs and timeouts: 5 kept 2 cores about 1.1 busy
MATRIX_TIMEOUT_S = 900  # a test may wait for the runs queued before its own
MATRIX_TESTS = ("test_suite_fails_the_faulty_connector", "test_reference_passes_the_same_selections")
UNDER_XDIST = "PYTEST_XDIST_WORKER" in os.environ


def control_selectors(timed: bool) -> list[str]:
    """Every fault's selectors, once each: the timed ones or the others."""
    chosen = [s for fault in FAULTS.values() for s in fault.select if is_timed(s) == timed]
    return list(dict.fromkeys(chosen))


def control_expectations(timed: bool) -> list[str]:
    """The IDs some fault must fail, in the timed control or the other: the reference must pass them."""
    wanted = [sid for fault in FAULTS.values() for sid in fault.caught_by if is_timed(sid) == timed]
    return list(dict.fromkeys(wanted))


class Gate:
    """Runs side by side (shared) or alone: one that must be alone waits for the others to end, and
    none starts beside it meanwhile."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._alone_waiting = 0
        self._alone_running = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone_running and not self._alone_waiting)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self._alone_waiting += 1
            self._changed.wait_for(lambda: not self._alone_running and self._running == 0)
            self._alone_waiting -= 1
            self._alone_running = True
        try:
            yield
        finally:
            with self._changed:
                self._alone_running = False
                self._changed.notify_all()


@dataclass
class Matrix:
    """The runs of a session: each started on demand or with the shared ones, PARALLEL_RUNS at a time."""

    folder: Path
    parallel: int
    _pool: ThreadPoolExecutor = field(init=False)
    _runs: dict[str, Future[SuiteRun]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _gate: Gate = field(default_factory=lambda: Gate())
    files_by_scenario: dict[str, set[str]] = field(default_factory=dict)
    started: bool = False  # the shared runs are submitted

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="fault-run")

    def submit(self, name: str) -> Future[SuiteRun]:
        with self._lock:
            if name not in self._runs:
                self._runs[name] = self._pool.submit(self._run, name)
            return self._runs[name]

    def result(self, name: str) -> SuiteRun:
        if name == TIMED_CONTROL:  # it measures latency: only once every other run has ended
            with self._lock:
                others = [future for key, future in self._runs.items() if key != name]
            wait(others)
        return self.submit(name).result(timeout=MATRIX_TIMEOUT_S)

    def _run(self, name: str) -> SuiteRun:
        with self._gate.alone() if runs_alone(name) else self._gate.shared():
            return self._run_now(name)

    def _run_now(self, name: str) -> SuiteRun:
        folder = self.folder / name
        if name in (CONTROL, TIMED_CONTROL):
            return run_suite(
                name,
                DEFAULT_MANIFEST,
                control_selectors(name == TIMED_CONTROL),
                folder,
                timeout=RUN_TIMEOUT_S,
            )
        fault = FAULTS[name]
        manifest = write_manifest(name, self.folder / "manifests")
        # a private temp folder: a fault's run never waits for the machine-wide benchmark lock
        private_tmp = folder / "tmpdir"
        private_tmp.mkdir(parents=True, exist_ok=True)
        return run_suite(
            name,
            manifest,
            fault.select,
            folder,
            timeout=RUN_TIMEOUT_S,
            env={"TMPDIR": str(private_tmp)},
            paths=self.paths_of(fault.select),
        )

    def paths_of(self, selectors: Sequence[str]) -> list[str]:
        """The test files that judge the selected scenarios, from the suite's listing
        (files_by_scenario); the whole of specs/ when some selector names a scenario the listing
        does not hold. A run that collects its few files rather than every module starts in half
        the time."""
        files: set[str] = set()
        for selector in selectors:
            found = [
                paths
                for sid, paths in self.files_by_scenario.items()
                if sid == selector or sid.startswith(selector + ".")
            ]
            if not found:
                return ["specs"]
            files.update(path for paths in found for path in paths)
        return sorted(files)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def files_by_scenario(listing: Path) -> dict[str, set[str]]:
    """Scenario ID -> the test files under specs/ that judge it, from one collection of the suite
    (--list-scenarios); empty when that collection fails, and every run then collects all of specs/."""
    command = [sys.executable, "-m", "pytest", "specs", "--collect-only", "-q", "-p", "no:randomly"]
    done = subprocess.run(
        [*command, "--list-scenarios", str(listing)],
        cwd=SPECS.parent,
        env=suite_env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not listing.is_file():
        return {}
    found: dict[str, set[str]] = {}
    for record in json.loads(listing.read_text(encoding="utf-8")):
        path = str(Path(record["path"]).relative_to(SPECS.parent))
        for sid in record["scenarios"]:
            found.setdefault(sid, set()).add(path)
    return found


def runs_alone(name: str) -> bool:
    """A run that judges time has the machine to itself: no other run goes on beside it."""
    if name in (CONTROL, TIMED_CONTROL):
        return name == TIMED_CONTROL
    return any(is_timed(selector) for selector in FAULTS[name].select)


def longest_first(names: list[str]) -> list[str]:
    """The control and the slow runs first, so the lanes finish together."""
    slow = {name for name in names if name == CONTROL or (name in FAULTS and FAULTS[name].slow)}
    return sorted(names, key=lambda name: (name != CONTROL, name not in slow))


def matrix_run(item: pytest.Item) -> str | None:
    """The run a test of the matrix judges (a fault's name, or a control's), or None."""
    if not isinstance(item, pytest.Function) or item.originalname not in MATRIX_TESTS:
        return None
    params = getattr(item, "callspec", None)
    return str(params.params["run"]) if params is not None and "run" in params.params else None


_MATRIX_KEY = pytest.StashKey["Matrix"]()


def session_matrix(session: pytest.Session) -> Matrix:
    """The session's matrix, made on first use and closed with the session. Its runs' folders go
    into $FAULT_REPORTS_DIR when it is set."""
    config = session.config
    found = config.stash.get(_MATRIX_KEY, None)
    if found is not None:
        return found
    chosen = os.environ.get("FAULT_REPORTS_DIR")
    if chosen:
        folder = Path(chosen).resolve()
    else:
        factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
        folder = factory.mktemp("fault-runs")
    folder.mkdir(parents=True, exist_ok=True)
    made = Matrix(folder, 1 if UNDER_XDIST else PARALLEL_RUNS)
    made.files_by_scenario = files_by_scenario(folder / "listing.json")
    config.stash[_MATRIX_KEY] = made
    config.add_cleanup(made.close)
    return made


def start_shared_runs(session: pytest.Session) -> None:
    """Start, PARALLEL_RUNS at a time, every run the session's tests will ask for that may go beside
    others; once per session. The runs that go alone start when their tests ask (at the session's
    end, see tests/conftest.py); the control not at all when the session's own tests judge its
    scenarios against the reference. Under pytest-xdist each run starts when its test asks."""
    matrix = session_matrix(session)
    if matrix.started or UNDER_XDIST:
        return
    matrix.started = True
    wanted = [name for item in session.items if (name := matrix_run(item)) is not None]
    covered = session_runs_against_the_reference(session, control_expectations(timed=False))
    shared = [
        name for name in dict.fromkeys(wanted) if not runs_alone(name) and not (name == CONTROL and covered)
    ]
    for name in longest_first(shared):
        matrix.submit(name)


def judges_the_reference(config: pytest.Config) -> bool:
    """This session's SUT is the reference (the default manifest, unchanged)."""
    manifest = config.stash.get(MANIFEST_KEY, None)
    return manifest is not None and manifest.digest == load_manifest(DEFAULT_MANIFEST).digest


def session_runs_against_the_reference(session: pytest.Session, expected: list[str]) -> bool:
    """This session's own tests judge every expected scenario against the reference."""
    if not judges_the_reference(session.config):
        return False
    judged = {sid for item in session.items for sid in scenario_ids(item)}
    return set(expected) <= judged
