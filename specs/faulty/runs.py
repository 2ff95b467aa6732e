"""One run of the suite against a manifest, as a subprocess, and what its report says.

Each run writes into its own folder: the conformance report (conformance-report.json, .md, .html),
the suite's output (output.log), the programs' logs (tmp/, pytest's --basetemp) and run.json (the
command, exit code and duration), which tools/fault_table.py reads back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT_FILE = "conformance-report.json"
RUN_FILE = "run.json"
OUTPUT_FILE = "output.log"
CAUGHT = frozenset({"failed", "error"})
RAN = frozenset({"passed", "failed", "error", "known-failure", "skipped", "not-applicable"})
INTERRUPT_GRACE_S = 30.0  # after SIGINT, the suite's teardown stops the programs it started
PYTEST_TESTS_FAILED = 1


@dataclass
class SuiteRun:
    """A finished run: how it ended and where its files are."""

    name: str
    manifest: str
    selectors: list[str]
    command: list[str]
    returncode: int
    duration_s: float
    folder: str
    timed_out: bool = False
    started_at: float = 0.0  # wall clock (time.time())

    @property
    def report_path(self) -> Path:
        return Path(self.folder) / REPORT_FILE

    def report(self) -> dict[str, Any]:
        if not self.report_path.is_file():
            raise AssertionError(
                f"{self.name}: the run left no report at {self.report_path}; {self.output_tail()}"
            )
        data: dict[str, Any] = json.loads(self.report_path.read_text(encoding="utf-8"))
        return data

    def statuses(self) -> dict[str, tuple[str, str]]:
        """Scenario ID -> (status, reason), for every scenario that ran."""
        return {
            row["id"]: (row["status"], row["reason"])
            for row in self.report()["scenarios"]
            if row["status"] in RAN
        }

    def caught(self) -> dict[str, str]:
        """Scenario ID -> reason, for every scenario reported failed or error."""
        return {sid: reason for sid, (status, reason) in self.statuses().items() if status in CAUGHT}

    def output_tail(self, lines: int = 40) -> str:
        path = Path(self.folder) / OUTPUT_FILE
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        return "output (last lines):\n" + "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        how = f"timed out after {self.duration_s:.0f} s" if self.timed_out else f"exit code {self.returncode}"
        return f"{self.name}: {how}, {self.duration_s:.1f} s, selectors {' '.join(self.selectors)}"


def suite_command(
    manifest: Path, selectors: Sequence[str], folder: Path, paths: Sequence[str] = ("specs",)
) -> list[str]:
    command = [sys.executable, "-m", "pytest", *paths, "--sut", str(manifest)]
    for selector in selectors:
        command += ["--scenario", selector]
    command += ["--report-dir", str(folder), "--basetemp", str(folder / "tmp"), "-p", "no:randomly", "-q"]
    return command


def _interrupt(process: subprocess.Popen[bytes]) -> int:
    """SIGINT (pytest then writes its reports), SIGKILL after INTERRUPT_GRACE_S; the exit code."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def suite_env() -> dict[str, str]:
    """The environment of a suite run as a subprocess: a suite of its own, with no options or xdist
    worker identity of an outer pytest."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}


def run_suite(
    name: str,
    manifest: Path,
    selectors: Sequence[str],
    folder: Path,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    paths: Sequence[str] = ("specs",),
) -> SuiteRun:
    """Run the suite's `selectors` against `manifest`, reports into `folder`; SIGINT after `timeout`
    (the suite then stops its programs), SIGKILL if it is still running INTERRUPT_GRACE_S later.
    `paths` are the test files or folders pytest collects (the selectors choose among them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_FILE).unlink(missing_ok=True)
    command = suite_command(manifest, selectors, folder, paths)
    child_env = {**suite_env(), **(env or {})}
    started, started_at = time.monotonic(), time.time()
    timed_out = False
    with (folder / OUTPUT_FILE).open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = _interrupt(process)
        except BaseException:  # the caller is interrupted: the run must not outlive it
            _interrupt(process)
            raise
    run = SuiteRun(
        name=name,
        manifest=str(manifest),
        selectors=list(selectors),
        command=command,
        returncode=returncode,
        duration_s=time.monotonic() - started,
        folder=str(folder),
        timed_out=timed_out,
        started_at=started_at,
    )
    (folder / RUN_FILE).write_text(json.dumps(asdict(run), indent=1), encoding="utf-8")
    return run


def load_run(folder: Path) -> SuiteRun:
    """A run from the run.json it left in `folder`."""
    data = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    return SuiteRun(**data)


__all__ = [
    "CAUGHT",
    "PYTEST_TESTS_FAILED",
    "REPORT_FILE",
    "RUN_FILE",
    "SuiteRun",
    "load_run",
    "run_suite",
    "suite_env",
]
