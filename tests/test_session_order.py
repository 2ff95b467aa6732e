"""A session's order around the fault matrix (tests/session_order.py): what runs alone goes first or
last, the rest beside the matrix's shared runs, whose verdicts follow in the order the runs start."""

from __future__ import annotations

import pytest

from tests import session_order
from tests.fault_matrix import FAULTS, longest_first, runs_alone

TIMED = next(name for name in FAULTS if runs_alone(name))
SHARED = [name for name in FAULTS if not runs_alone(name)][:3]


def test_a_session_goes_alone_first_then_beside_the_matrix_then_its_verdicts_then_alone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    exclusive: e\n")
    runs = ["control-timed", "control", TIMED, *SHARED]
    items = pytester.getitems(
        f"""
        import pytest

        @pytest.mark.parametrize("run", {runs!r})
        def test_suite_fails_the_faulty_connector(run): pass

        def test_plain(): pass

        @pytest.mark.scenario("4.2.1.x30")  # exclusive in the catalogue: it stops the connector
        def test_exclusive_scenario(): pass

        @pytest.mark.scenario("4.2.1.a")
        def test_shared_scenario(): pass

        @pytest.mark.exclusive
        def test_marked_exclusive(): pass
        """
    )
    session_order.order(items)
    names = [item.name for item in items]
    first, beside = names[:2], names[2:4]
    assert sorted(first) == ["test_exclusive_scenario", "test_marked_exclusive"], (
        f"expected the exclusive scenario and the test marked exclusive first, got {names}"
    )
    assert sorted(beside) == ["test_plain", "test_shared_scenario"], (
        f"expected the other tests next, beside the matrix, got {names}"
    )
    shared = [f"test_suite_fails_the_faulty_connector[{name}]" for name in longest_first(SHARED)]
    assert names[4:7] == shared, f"expected the shared runs' verdicts in the order they start, got {names}"
    assert names[7:] == [
        f"test_suite_fails_the_faulty_connector[{TIMED}]",
        "test_suite_fails_the_faulty_connector[control]",
        "test_suite_fails_the_faulty_connector[control-timed]",
    ], f"expected the timed run, the control and the timed control last, got {names}"
