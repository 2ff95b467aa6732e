"""The suite catches faults: every faulty connector of specs/faulty fails the scenarios meant to catch it.

For each fault of specs/faulty/faults.yaml the suite runs as a subprocess against the fault's
manifest (the reference's, with the connector replaced), with the fault's --scenario selectors; the
run must fail, and every scenario of the fault's `caught_by` must be reported failed or error. The
control: the reference passes the same selections. In a session that itself runs those scenarios
against the reference (a whole `./test`), their verdicts there are the control; otherwise it is a
run of its own. tests/fault_matrix.py makes the runs; tests/conftest.py orders a whole session so
that they go on beside the tests that may share the machine, and the runs that judge time alone,
at its end.

The runs' reports stay in $FAULT_REPORTS_DIR (one folder per run) when it is set;
`python tools/fault_table.py` turns them into docs/fault-catch-table.md.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from harness.outcomes import Status
from harness.report import results as run_results
from harness.stash import MANIFEST_KEY, RESULTS_KEY
from harness.sut.manifest import DEFAULT_MANIFEST, load_manifest
from specs.faulty.catalogue import Fault
from specs.faulty.connector import FAULTS as CONNECTOR_FAULTS
from specs.faulty.driver import FAULTS as DRIVER_FAULTS
from specs.faulty.go import FAULTS as GO_FAULTS
from specs.faulty.go import go_missing
from specs.faulty.live_server import FAULTS as LIVE_SERVER_FAULTS
from specs.faulty.manifests import MODULES, faulty_program, write_manifest
from specs.faulty.node import FAULTS as NODE_FAULTS
from specs.faulty.node import node_missing
from specs.faulty.runs import PYTEST_TESTS_FAILED
from tests.fault_matrix import (
    CONTROL,
    FAULTS,
    MATRIX_TIMEOUT_S,
    TIMED_CONTROL,
    Matrix,
    control_expectations,
    judges_the_reference,
    session_matrix,
    start_shared_runs,
)

IMPLEMENTED = {**CONNECTOR_FAULTS, **LIVE_SERVER_FAULTS, **DRIVER_FAULTS, **NODE_FAULTS, **GO_FAULTS}


@pytest.fixture(scope="session")
def matrix(request: pytest.FixtureRequest) -> Matrix:
    """The session's matrix, its shared runs started (if tests/conftest.py has not yet)."""
    start_shared_runs(request.session)
    return session_matrix(request.session)


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
