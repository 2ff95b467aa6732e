"""specs/sequences.py: a compared sequence of updates is described in the words of the fault."""

from __future__ import annotations

import pytest

from opensqt.exchange.testdata import spec_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from specs.sequences import altered_fields, sequence_problem

pytestmark = pytest.mark.timeout(10)


def account(n: int, balance: str | None = None) -> pb.Account:
    update = spec_account(total_balance=balance or f"{10000 + n}.00")
    update.updated_at.FromSeconds(1_700_000_000 + n)
    return update


SENT = [account(n) for n in range(1, 26)]


def test_the_same_sequence_has_no_problem() -> None:
    assert sequence_problem(SENT, list(SENT)) is None


def test_a_periodic_loss_names_the_first_lost_update() -> None:
    got = [m for i, m in enumerate(SENT, start=1) if i % 10 != 0]
    assert sequence_problem(SENT, got) == (
        "update 10 was lost: update 11 came next (expected 25 updates in the order sent, got 23)"
    )


def test_a_trailing_duplicate_is_called_one() -> None:
    problem = sequence_problem(SENT, [*SENT, SENT[-1]])
    assert problem is not None and problem.startswith("update 25 was duplicated")


def test_a_duplicate_in_the_middle_is_called_one() -> None:
    problem = sequence_problem(SENT[:6], [*SENT[:4], SENT[3], *SENT[4:6]])
    assert problem is not None and problem.startswith("update 4 was duplicated")


def test_swapped_updates_are_reordered() -> None:
    problem = sequence_problem(SENT[:4], [SENT[0], SENT[2], SENT[1], SENT[3]])
    assert problem is not None and problem.startswith("updates 2 and 3 were reordered")


def test_an_altered_update_names_the_field_with_both_values() -> None:
    got = list(SENT[:3])
    got[1] = account(2, "10002.0")
    problem = sequence_problem(SENT[:3], got)
    assert problem is not None
    assert problem.startswith(
        "update 2 was altered (field total_balance: expected '10002.00', got '10002.0')"
    )


def test_lost_at_the_end_and_nothing_at_all() -> None:
    assert sequence_problem(SENT[:3], SENT[:2]) == (
        "update 3 (the last one sent) was lost (expected 3 updates in the order sent, got 2)"
    )
    problem = sequence_problem(SENT[:3], [])
    assert problem is not None and problem.startswith("updates 1-3 were lost")


def test_altered_fields_lists_only_what_differs() -> None:
    assert altered_fields(account(1), account(1, "1.00")) == [
        "field total_balance: expected '10001.00', got '1.00'"
    ]
