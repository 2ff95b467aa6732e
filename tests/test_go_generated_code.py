"""The generated Go contract package (interop/go/exchangev1) is what the committed .proto produces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def go_binary() -> str | None:
    """The go command tools/gen_proto_go.py would use, or None."""
    return shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)


@pytest.mark.timeout(400)
def test_go_generated_code_is_fresh() -> None:
    if go_binary() is None:
        pytest.skip("environment: go not found (the Go programs of interop/go need Go 1.26)")
    done = subprocess.run(
        [sys.executable, "tools/gen_proto_go.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=390,
    )
    if done.returncode == 2:
        pytest.skip(f"environment: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, f"the Go contract package interop/go/exchangev1 is stale:\n{done.stderr}"
