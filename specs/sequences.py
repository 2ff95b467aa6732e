"""What went wrong with a sequence of updates, in the words of the fault.

A scenario that sends updates and reads them back compares the two sequences with
`sequence_problem()`: it says which update was lost, duplicated, reordered or altered (naming the
field, with what was expected and what came), or what came that was never sent, instead of
"update 3 differs". The update's number is its place in what was sent, counted from 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

__all__ = ["altered_fields", "sequence_problem", "short"]

SHOWN_CHARS = 120


def short(message: Any) -> str:
    """A message in one line, cut to SHOWN_CHARS."""
    text = (
        text_format.MessageToString(message, as_one_line=True)
        if isinstance(message, Message)
        else repr(message)
    )
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def altered_fields(expected: Any, got: Any) -> list[str]:
    """The fields whose values differ, as "field X: expected …, got …" (protobuf messages; anything
    else is compared whole)."""
    if not isinstance(expected, Message) or not isinstance(got, Message) or type(expected) is not type(got):
        return [f"expected {short(expected)}, got {short(got)}"]
    changed = []
    for field in expected.DESCRIPTOR.fields:
        want, have = getattr(expected, field.name), getattr(got, field.name)
        if want != have:
            show = (lambda v: short(v)) if isinstance(want, Message) else repr
            changed.append(f"field {field.name}: expected {show(want)}, got {show(have)}")
    return changed or [f"expected {short(expected)}, got {short(got)}"]


def _closest(candidates: Sequence[tuple[int, Any]], got: Any) -> tuple[int, Any] | None:
    """The candidate that differs from `got` in the fewest fields (None when there is none)."""
    if not candidates:
        return None
    return min(candidates, key=lambda pair: len(altered_fields(pair[1], got)))


def sequence_problem(
    expected: Sequence[Any],
    got: Sequence[Any],
    *,
    noun: str = "update",
    same: Callable[[Any, Any], bool] = lambda a, b: bool(a == b),
) -> str | None:
    """None when `got` is exactly `expected`; otherwise the first thing that went wrong, in the words
    of the fault ("update 10 of 25 was lost", "update 4 was duplicated", "updates 2 and 3 were
    reordered", "update 7 was altered (field equity: expected '1.00', got '1.0')"), with how many
    were expected and how many came."""
    total = f"(expected {len(expected)} {noun}s in the order sent, got {len(got)})"

    def find(item: Any, pool: Sequence[Any], start: int = 0) -> int | None:
        return next((k for k in range(start, len(pool)) if same(pool[k], item)), None)

    i = j = 0
    while i < len(expected) and j < len(got):
        if same(expected[i], got[j]):
            i += 1
            j += 1
            continue
        earlier = find(got[j], expected[:i])
        if earlier is not None:
            return f"{noun} {earlier + 1} was duplicated: it came again as {noun} {j + 1} received {total}"
        later = find(got[j], expected, i + 1)
        if later is not None:
            if find(expected[i], got, j + 1) is not None:
                return (
                    f"{noun}s {i + 1} and {later + 1} were reordered: {noun} {later + 1} came before "
                    f"{noun} {i + 1} {total}"
                )
            lost = list(range(i + 1, later + 1))
            missing = (
                f"{noun} {lost[0]} was lost" if len(lost) == 1 else f"{noun}s {lost[0]}-{lost[-1]} were lost"
            )
            return f"{missing}: {noun} {later + 1} came next {total}"
        if find(expected[i], got, j + 1) is not None:  # something never sent came first
            return f"{noun} received {j + 1} was never sent: {short(got[j])} {total}"
        pool = [(k, expected[k]) for k in range(i, min(len(expected), i + 3))]
        k, want = _closest(pool, got[j]) or (i, expected[i])
        return f"{noun} {k + 1} was altered ({'; '.join(altered_fields(want, got[j]))}) {total}"
    if i < len(expected):
        rest = len(expected) - i
        if rest == 1:
            return f"{noun} {i + 1} (the last one sent) was lost {total}"
        return f"{noun}s {i + 1}-{len(expected)} were lost: nothing came after {noun} {i} {total}"
    if j < len(got):
        earlier = find(got[j], expected)
        if earlier is not None:
            return f"{noun} {earlier + 1} was duplicated: it came again after the last one sent {total}"
        return f"a {noun} that was never sent came after the last one: {short(got[j])} {total}"
    return None
