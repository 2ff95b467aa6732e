"""Inside scenario tests, a skip is allowed only for a named environment limit: its reason starts
with "environment:". Anything else would hide a failure. "Not applicable" is not a skip a test
writes: it comes from harness.outcomes.not_applicable, with a typed reason (the unclaimed
capability, or a mode of the run)."""

from __future__ import annotations

import ast
from pathlib import Path

SPECS = Path(__file__).resolve().parent.parent / "specs"
ALLOWED_PREFIXES = ("environment:",)
SKIPPING_CALLS = {"skip", "skipif", "xfail", "importorskip"}


def _reason(call: ast.Call) -> str | None:
    for keyword in call.keywords:
        if keyword.arg in ("reason", "msg") and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
        if keyword.arg in ("reason", "msg") and isinstance(keyword.value, ast.JoinedStr):
            first = keyword.value.values[0] if keyword.value.values else None
            return str(first.value) if isinstance(first, ast.Constant) else None
    positional = call.args[1:] if _name(call) == "skipif" else call.args[:1]
    for arg in positional:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            return str(arg.values[0].value)
    return None


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def hidden_skips(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or _name(node) not in SKIPPING_CALLS:
            continue
        owner = node.func.value if isinstance(node.func, ast.Attribute) else None
        if (
            isinstance(owner, ast.Name)
            and owner.id not in ("pytest",)
            and not (isinstance(owner, ast.Attribute) and owner.attr == "mark")
        ):
            continue
        reason = _reason(node)
        if reason is None or not reason.startswith(ALLOWED_PREFIXES):
            found.append(f"{filename}:{node.lineno}: {_name(node)} with reason {reason!r}")
    return found


def test_scenario_tests_have_no_hidden_skips() -> None:
    found = []
    for path in sorted(SPECS.rglob("*.py")):
        found += hidden_skips(path.read_text(encoding="utf-8"), str(path.relative_to(SPECS.parent)))
    assert not found, (
        "skips in scenario tests must start with 'environment:' (not applicable: harness.outcomes):\n"
        + "\n".join(found)
    )


def test_the_lint_catches_a_plain_skip() -> None:
    source = 'import pytest\ndef test_x():\n    pytest.skip("flaky on CI")\n'
    assert hidden_skips(source, "t.py") == ["t.py:3: skip with reason 'flaky on CI'"]


def test_the_lint_allows_environment_skips() -> None:
    source = (
        "import pytest\n"
        "@pytest.mark.skipif(True, reason='environment: no Docker engine')\n"
        "def test_x():\n"
        "    pytest.skip('environment: no Chromium')\n"
    )
    assert hidden_skips(source, "t.py") == []


def test_the_lint_catches_a_hand_written_not_applicable() -> None:
    source = "import pytest\ndef test_x():\n    pytest.skip('not applicable: SUT does not claim tls')\n"
    assert hidden_skips(source, "t.py") == [
        "t.py:3: skip with reason 'not applicable: SUT does not claim tls'"
    ]
