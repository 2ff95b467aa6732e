"""`opensqt-conform`: the conformance suite from any folder, against the reference or `--sut FILE`.

    opensqt-conform                          # the reference implementation
    opensqt-conform --sut my-sut.toml        # another implementation
    opensqt-conform --scenario 4.2 -m perf   # any pytest option works
    opensqt-conform --list                   # the scenarios; --explain ID: one of them

It runs the installed scenarios (the `specs` package) with the suite's own pytest settings
(harness/suite.ini), whatever folder it is started in, and writes the reports to ./reports
(or --report-dir). `./conform` in a checkout runs the same command.

The tests run in WORKERS parallel workers (pytest-xdist), the scenarios that must run alone after
them on one worker (harness.schedule); `-n 0` runs everything in one process, as does a run that
lists, explains, attaches to a program started by hand or stops in a debugger.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
SPECS_DIR = HARNESS_DIR.parent / "specs"  # installed beside the harness, as in a checkout
SUITE_INI = HARNESS_DIR / "suite.ini"


WORKERS = 3  # the tests mostly wait on programs and the network: 3 workers on 2 cores
SERIAL_FLAGS = ("--attach", "--list", "--explain", "--pdb", "--trace", "--collect-only", "--co")


def pytest_args(argv: Sequence[str], cwd: Path) -> list[str]:
    """The pytest command line for the suite, given the console script's own arguments."""
    args = ["-c", str(SUITE_INI), "--rootdir", str(SPECS_DIR.parent)]
    if not any(arg == "--report-dir" or arg.startswith("--report-dir=") for arg in argv):
        args += ["--report-dir", str(cwd / "reports")]
    args += parallel_args(argv)
    return [*args, *argv, str(SPECS_DIR)]


def parallel_args(argv: Sequence[str]) -> list[str]:
    """`-n WORKERS` unless the arguments choose the workers themselves or need one process."""
    chosen = any(arg in ("-n", "--numprocesses") or arg.startswith(("-n", "--numprocesses=")) for arg in argv)
    serial = any(arg.split("=", 1)[0] in SERIAL_FLAGS for arg in argv)
    no_xdist = any(a == "no:xdist" or a == "-pno:xdist" for a in argv)
    if chosen or serial or no_xdist:
        return []
    return ["-n", os.environ.get("CONFORM_WORKERS", str(WORKERS))]


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
