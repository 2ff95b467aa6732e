"""The suite catches faults: every faulty connector of specs/faulty fails the scenarios meant to catch it.

For each fault of specs/faulty/faults.yaml the suite runs as a subprocess against the fault's
manifest (the reference's, with the connector replaced), with the fault's --scenario selectors; the
run must fail, and every scenario of the fault's `caught_by` must be reported failed or error. The
control: the reference passes the same selections. In a session that itself runs those scenarios
against the reference (a whole `./test`), their verdicts there are the control; otherwise it is a
run of its own. The runs go six at a time (one under
pytest-xdist, whose workers already share the machine), except a run whose selections judge time
(§6, or a timing-bounded scenario): a second run beside it would be a busy neighbour, and its
verdict INCONCLUSIVE. Such a fault's run goes alone, as soon as the runs beside it end; the
reference's run of those selections goes last, alone.

The runs' reports stay in $FAULT_REPORTS_DIR (one folder per run) when it is set;
`python tools/fault_table.py` turns them into docs/fault-catch-table.md.
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
from types import SimpleNamespace
from typing import cast

import pytest

from harness.markers import scenario_ids
from harness.outcomes import Status
from harness.report import results as run_results
from harness.stash import MANIFEST_KEY, RESULTS_KEY
from harness.sut.manifest import DEFAULT_MANIFEST, load_manifest
from specs.faulty.catalogue import Fault, is_timed, load_faults
from specs.faulty.connector import FAULTS as CONNECTOR_FAULTS
from specs.faulty.driver import FAULTS as DRIVER_FAULTS
from specs.faulty.go import FAULTS as GO_FAULTS
from specs.faulty.go import go_missing
from specs.faulty.live_server import FAULTS as LIVE_SERVER_FAULTS
from specs.faulty.manifests import MODULES, faulty_program, write_manifest
from specs.faulty.node import FAULTS as NODE_FAULTS
from specs.faulty.node import node_missing
from specs.faulty.runs import PYTEST_TESTS_FAILED, SuiteRun, run_suite, suite_env

FAULTS = load_faults()
IMPLEMENTED = {**CONNECTOR_FAULTS, **LIVE_SERVER_FAULTS, **DRIVER_FAULTS, **NODE_FAULTS, **GO_FAULTS}
CONTROL, TIMED_CONTROL = "control", "control-timed"
SPECS = Path(__file__).resolve().parents[1] / "specs"
RUN_TIMEOUT_S = 300.0
PARALLEL_RUNS = 6  # the runs wait on programs and timeouts: 5 kept 2 cores about 1.1 busy
MATRIX_TIMEOUT_S = 900  # a test may wait for the runs queued before its own
MATRIX_TESTS = ("test_suite_fails_the_faulty_connector", "test_reference_passes_the_same_selections")


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
    """The runs of this module: started on demand, or all at once in a pool of PARALLEL_RUNS."""

    folder: Path
    parallel: int
    _pool: ThreadPoolExecutor = field(init=False)
    _runs: dict[str, Future[SuiteRun]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _gate: Gate = field(default_factory=lambda: Gate())
    files_by_scenario: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="fault-run")

    def _alone(self, name: str) -> bool:
        """A run that judges time has the machine to itself: no other run goes on beside it."""
        if name in (CONTROL, TIMED_CONTROL):
            return name == TIMED_CONTROL
        return any(is_timed(selector) for selector in FAULTS[name].select)

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
        with self._gate.alone() if self._alone(name) else self._gate.shared():
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


def _queued_first(names: list[str]) -> list[str]:
    """The runs that go alone first, while no lane has work to drain for them; then the longest
    runs, so the lanes finish together."""
    alone = {name for name in names if name in FAULTS and any(is_timed(s) for s in FAULTS[name].select)}
    slow = {name for name in names if name == CONTROL or (name in FAULTS and FAULTS[name].slow)}
    return sorted(names, key=lambda name: (name not in alone, name != CONTROL, name not in slow))


# session-scoped: the controls run at the session's end, apart from the fault runs' tests, and must
# find the runs already made rather than set up a second pool that starts them all again
@pytest.fixture(scope="session")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    chosen = os.environ.get("FAULT_REPORTS_DIR")
    folder = Path(chosen).resolve() if chosen else tmp_path_factory.mktemp("fault-runs")
    under_xdist = "PYTEST_XDIST_WORKER" in os.environ
    runs = Matrix(folder, 1 if under_xdist else PARALLEL_RUNS)
    folder.mkdir(parents=True, exist_ok=True)
    runs.files_by_scenario = files_by_scenario(folder / "listing.json")
    try:
        if not under_xdist:  # start every run this session will ask for, PARALLEL_RUNS at a time
            wanted = [
                str(item.callspec.params["run"])
                for item in request.session.items
                if isinstance(item, pytest.Function)
                and item.originalname in MATRIX_TESTS
                and hasattr(item, "callspec")
                and "run" in item.callspec.params
            ]
            covered = session_runs_against_the_reference(request.session, control_expectations(timed=False))
            queued = [name for name in dict.fromkeys(wanted) if name != TIMED_CONTROL]
            for name in _queued_first([name for name in queued if not (name == CONTROL and covered)]):
                runs.submit(name)
        yield runs
    finally:
        runs.close()


def fault_param(fault: Fault) -> object:
    marks = [pytest.mark.slow] if fault.slow else []
    return pytest.param(fault.name, marks=marks, id=fault.name)


# ---------------------------------------------------------------------------------------------- the catalogue


def test_fault_catalogue_matches_the_faulty_connector() -> None:
    assert set(FAULTS) == set(IMPLEMENTED), (
        f"expected faults.yaml to list exactly the faults specs/faulty/connector.py and live_server.py "
        f"implement, got catalogue {sorted(FAULTS)} and programs {sorted(IMPLEMENTED)}"
    )
    names = [*CONNECTOR_FAULTS, *LIVE_SERVER_FAULTS, *DRIVER_FAULTS, *NODE_FAULTS, *GO_FAULTS]
    assert len(names) == len(set(names)), "expected each fault name used once"


# the Node and Go connectors' faults have manifests of their own (tests/test_node_connector.py,
# test_go_fault_manifest_switches_on_only_the_fault below)
@pytest.mark.parametrize(
    "fault", [name for name in FAULTS if name not in NODE_FAULTS and name not in GO_FAULTS]
)
def test_fault_manifest_replaces_only_the_connector(fault: str, tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(fault, tmp_path))
    reference = load_manifest(DEFAULT_MANIFEST)
    replaced = faulty_program(fault)
    command = manifest.program(replaced).command
    assert command[1:5] == ("-m", MODULES[replaced][1], "--fault", fault), (
        f"expected the {replaced} command to run the fault {fault!r}, got {command}"
    )
    assert command[5:] == reference.program(replaced).command[3:], (
        f"expected the reference's flags unchanged, got {command[5:]}"
    )
    for name in ("exchange_connector", "market_maker", "live_server"):
        if name != replaced:
            assert manifest.program(name) == reference.program(name), f"expected {name} unchanged"
    assert manifest.capabilities == reference.capabilities, (
        f"expected the reference's capabilities, got {sorted(manifest.capabilities)}"
    )


@pytest.mark.parametrize("fault", list(GO_FAULTS))
def test_go_fault_manifest_switches_on_only_the_fault(fault: str, tmp_path: Path) -> None:
    from specs.faulty.go import FAULT_ENV, GO_DIR, GO_MANIFEST

    manifest = load_manifest(write_manifest(fault, tmp_path))
    go = load_manifest(GO_MANIFEST)
    connector = manifest.program("exchange_connector")
    assert connector.env.get(FAULT_ENV) == GO_FAULTS[fault], f"expected {FAULT_ENV} set, got {connector.env}"
    assert connector.command[0] == str(GO_DIR / "bin" / "exchange_connector"), (
        f"expected the Go connector's binary, got {connector.command}"
    )
    for name in ("market_maker", "live_server"):
        assert manifest.program(name) == go.program(name), f"expected {name} unchanged"
    assert manifest.capabilities == go.capabilities, (
        f"expected interop/go/sut.toml's capabilities, got {sorted(manifest.capabilities)}"
    )


# ---------------------------------------------------------------------------------------------- the matrix


@pytest.mark.timeout(MATRIX_TIMEOUT_S)
@pytest.mark.parametrize("run", [fault_param(fault) for fault in FAULTS.values()])
def test_suite_fails_the_faulty_connector(run: str, matrix: Matrix) -> None:
    fault = FAULTS[run]
    if run in NODE_FAULTS and (missing := node_missing()):
        pytest.skip(missing)
    if run in GO_FAULTS and (missing := go_missing()):
        pytest.skip(missing)
    result = matrix.result(run)
    caught = result.caught() if result.report_path.is_file() else {}
    print(f"catch table: {run}: caught by {', '.join(caught) or 'nothing'} ({result.describe()})")
    for sid, reason in caught.items():
        print(f"  {sid}: {reason}")
    assert not result.timed_out, f"{result.describe()}; {result.output_tail()}"
    assert result.returncode == PYTEST_TESTS_FAILED, (
        f"expected the suite to fail against the fault {run!r} (exit code {PYTEST_TESTS_FAILED}: tests failed), "
        f"got {result.describe()}; {result.output_tail()}"
    )
    statuses = result.statuses()
    missed = {sid: statuses.get(sid, ("not run", ""))[0] for sid in fault.caught_by if sid not in caught}
    assert not missed, (
        f"expected the fault {run!r} ({fault.description}) to be caught by {', '.join(fault.caught_by)}; "
        f"these were not failed or error: {missed}; caught by: {caught or 'nothing'}"
    )


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


def passed_in_this_session(config: pytest.Config, expected: list[str]) -> bool:
    """This session already ran every expected scenario against the reference, and each passed.

    A whole `./test` runs the catalogue against the reference before this module's controls (see
    tests/conftest.py's pytest_collection_modifyitems): running those scenarios again in a subprocess would measure
    the same reference twice. Anything less (another SUT, a selection without them, a scenario that
    did not pass here) leaves the decision to the control's own run."""
    results = config.stash.get(RESULTS_KEY, None)
    if results is None or not judges_the_reference(config):
        return False
    statuses = results.scenario_status()
    return all(sid in statuses and statuses[sid].outcome is Status.PASSED for sid in expected)


@pytest.mark.slow
@pytest.mark.timeout(MATRIX_TIMEOUT_S)
@pytest.mark.parametrize("run", [CONTROL, TIMED_CONTROL])
def test_reference_passes_the_same_selections(
    run: str, matrix: Matrix, request: pytest.FixtureRequest
) -> None:
    expected = control_expectations(timed=run == TIMED_CONTROL)
    if passed_in_this_session(request.config, expected):
        print(f"{run}: this session's own run of the reference passed all {len(expected)} scenarios")
        return
    result = matrix.result(run)
    assert not result.timed_out, f"{result.describe()}; {result.output_tail()}"
    caught = result.caught() if result.report_path.is_file() else {}
    assert result.returncode == 0 and not caught, (
        f"expected the reference to pass the selections {' '.join(result.selectors)}, got {result.describe()}; "
        f"failed: {caught}; {result.output_tail()}"
    )
    statuses = result.statuses()
    not_passed = {
        sid: statuses.get(sid, ("not run", ""))[0]
        for sid in expected
        if statuses.get(sid, ("",))[0] != "passed"
    }
    assert not not_passed, (
        f"expected the reference to pass every scenario a fault must fail, got {not_passed}"
    )


def test_the_control_reuses_only_this_sessions_passes_against_the_reference(tmp_path: Path) -> None:
    def session(manifest: Path, *outcomes: tuple[str, Status]) -> pytest.Config:
        config = SimpleNamespace(stash=pytest.Stash())
        config.stash[MANIFEST_KEY] = load_manifest(manifest)
        config.stash[RESULTS_KEY] = run_results.RunResults(
            outcomes=[
                run_results.TestOutcome(f"specs/x.py::{sid}", [sid], status, "", 0.1)
                for sid, status in outcomes
            ]
        )
        return cast(pytest.Config, config)

    reference = session(DEFAULT_MANIFEST, ("4.2.1.a", Status.PASSED), ("4.2.1.b", Status.PASSED))
    assert passed_in_this_session(reference, ["4.2.1.a", "4.2.1.b"]), "expected both passes reused"
    assert not passed_in_this_session(reference, ["4.2.1.a", "4.2.1.c"]), (
        "expected a scenario not run here to need the control's run"
    )
    flaky = session(DEFAULT_MANIFEST, ("4.2.1.a", Status.PASSED), ("4.2.1.a", Status.INCONCLUSIVE))
    assert not passed_in_this_session(flaky, ["4.2.1.a"]), (
        "expected an inconclusive test to need the control's run"
    )
    faulty = session(write_manifest("drop-one-in-n", tmp_path), ("4.2.1.a", Status.PASSED))
    assert not passed_in_this_session(faulty, ["4.2.1.a"]), "expected another SUT's passes never to count"
