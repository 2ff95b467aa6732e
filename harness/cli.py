"""`opensqt-conform`: the conformance suite from any folder, against the reference or `--sut FILE`.

    opensqt-conform                          # the reference implementation
    opensqt-conform --sut my-sut.toml        # another implementation
    opensqt-conform --scenario 4.2 -m perf   # any pytest option works

It runs the installed scenarios (the `specs` package) with the suite's own pytest settings
(harness/suite.ini), whatever folder it is started in, and writes the reports to ./reports
(or --report-dir).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
SPECS_DIR = HARNESS_DIR.parent / "specs"  # installed beside the harness, as in a checkout
SUITE_INI = HARNESS_DIR / "suite.ini"


def pytest_args(argv: Sequence[str], cwd: Path) -> list[str]:
    """The pytest command line for the suite, given the console script's own arguments."""
    args = ["-c", str(SUITE_INI), "--rootdir", str(SPECS_DIR.parent)]
    if not any(arg == "--report-dir" or arg.startswith("--report-dir=") for arg in argv):
        args += ["--report-dir", str(cwd / "reports")]
    return [*args, *argv, str(SPECS_DIR)]


def main(argv: Sequence[str] | None = None) -> int:
    if not SPECS_DIR.is_dir():
        print(f"opensqt-conform: the scenarios are missing: no folder {SPECS_DIR}", file=sys.stderr)
        return 4
    args = pytest_args(list(sys.argv[1:] if argv is None else argv), Path.cwd())
    # pytest runs in a fresh interpreter: in this one the harness is imported already, and pytest
    # could not rewrite the plugin's assertions
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])


if __name__ == "__main__":
    raise SystemExit(main())
