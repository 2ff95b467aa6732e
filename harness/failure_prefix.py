"""The head of every failure message, "[4.2.1.x7] (rule C7): ", written by the harness from the
catalogue (each scenario's `rules` in specs/scenarios.yaml), so no test types it by hand and an
implementer reading a failure in CI knows the scenario and the rule without opening the test."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from harness import catalogue as catalogue_module


def prefix(ids: Sequence[str]) -> str:
    """ "[ID, ...] (rules ...): " for the scenario IDs; the rules in the catalogue's order."""
    if not ids:
        return ""
    catalogue = catalogue_module.load()
    rules: list[str] = []
    for sid in ids:
        scenario = catalogue.get(sid)
        for rule in scenario.rules if scenario is not None else ():
            if rule not in rules:
                rules.append(rule)
    head = f"[{', '.join(ids)}]"
    if rules:
        head += f" (rule{'s' if len(rules) > 1 else ''} {', '.join(rules)})"
    return head + ": "


def prefixed(ids: Sequence[str], message: str) -> str:
    """The message under its scenario and rule head (left as it is when it already names its
    scenario first)."""
    text = message.lstrip()
    if not ids or text.startswith("[") or any(text.startswith(sid + ":") for sid in ids):
        return message
    return prefix(ids) + message


def prefix_exception(error: BaseException, ids: Sequence[str]) -> None:
    """Puts the head on a failing test's exception in place, before pytest renders it."""
    if isinstance(error, pytest.fail.Exception):
        if error.msg is not None:
            error.msg = prefixed(ids, error.msg)
    elif isinstance(error, AssertionError) and error.args and isinstance(error.args[0], str):
        error.args = (prefixed(ids, error.args[0]), *error.args[1:])
