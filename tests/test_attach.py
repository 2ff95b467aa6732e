"""--attach: §4.2 against a connector started by hand (the reference's command from
implementation/sut.toml, as the suite prints it); the scenarios that must start, signal or restart
the program are not applicable, with their reason."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMAND_PREFIX = "attach-command: "
PRINTED_WITHIN_S = 60.0


def _read_command(suite: subprocess.Popen[str], seen: list[str]) -> list[str]:
    assert suite.stdout is not None
    deadline = time.monotonic() + PRINTED_WITHIN_S
    while time.monotonic() < deadline:
        line = suite.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(COMMAND_PREFIX):
            return shlex.split(line[len(COMMAND_PREFIX) :])
    raise AssertionError(f"expected the suite to print {COMMAND_PREFIX!r}, got: {''.join(seen)[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_attach_runs_the_scenarios_against_a_connector_started_by_hand(tmp_path: Path) -> None:
    selection = [
        "--scenario",
        "4.2.1.a",
        "--scenario",
        "4.2.1.x7",
        "--scenario",
        "4.2.2",
        "--scenario",
        "3.2.1",
    ]
    suite_command = [
        sys.executable, "-m", "harness.cli", "--attach", "--attach-timeout", "60", "-p", "no:randomly",
        "--report-dir", str(tmp_path / "out"), "--basetemp", str(tmp_path / "tmp"), *selection,
    ]  # fmt: skip
    seen: list[str] = []
    suite = subprocess.Popen(
        suite_command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    connector: subprocess.Popen[bytes] | None = None
    try:
        command = _read_command(suite, seen)
        assert command[1:4] == ["-m", "implementation.connector", "serve"], (
            f"expected the manifest's command, got {command}"
        )
        # by hand: the program the user would start under a debugger, not the suite's child
        connector = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert suite.stdout is not None
        rest, _ = suite.communicate(timeout=240)
        seen.append(rest)
        output = "".join(seen)
        assert connector.poll() is None, "expected the attached connector left running by the suite"
    finally:
        for process in (suite, connector):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
    assert "is serving; running the scenarios" in output, output[-3000:]
    report = json.loads((tmp_path / "out" / "conformance-report.json").read_text())
    ran = {row["id"]: row for row in report["scenarios"] if row["status"] != "not-run"}
    passed = {sid for sid, row in ran.items() if row["status"] == "passed"}
    for sid in ("4.2.1.x7", "4.2.2.a", "4.2.2.b", "4.2.2.ac1", "4.2.2.ac2"):
        assert sid in passed, (
            f"expected {sid} to pass against the attached connector, got {ran.get(sid)}; {output[-3000:]}"
        )
    lifecycle = {sid: row for sid, row in ran.items() if sid.startswith("3.2.1.")}
    assert lifecycle, f"expected the lifecycle scenarios to be reported, got {sorted(ran)}"
    for sid, row in lifecycle.items():
        assert row["status"] == "not-applicable", f"expected {sid} not applicable in attach mode, got {row}"
        assert "attach mode" in row["reason"] and "connector" in row["reason"], row["reason"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_attach_client_driver_runs_each_driver_session_on_a_driver_started_by_hand(tmp_path: Path) -> None:
    """--attach client_driver: for each driver a scenario needs, the suite prints a command line
    whose stdin and stdout are two named pipes; the 'user' (this test) starts each one by hand."""
    suite_command = [
        sys.executable, "-m", "harness.cli", "--attach", "client_driver", "--attach-timeout", "60",
        "-p", "no:randomly", "--report-dir", str(tmp_path / "out"), "--basetemp", str(tmp_path / "tmp"),
        "--scenario", "3.1.1.a", "--scenario", "3.1.2.a", "--scenario", "4.1.1.a",
    ]  # fmt: skip
    suite = subprocess.Popen(
        suite_command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    drivers: list[subprocess.Popen[bytes]] = []
    seen: list[str] = []
    try:
        assert suite.stdout is not None
        for line in suite.stdout:
            seen.append(line)
            if line.startswith(COMMAND_PREFIX):
                # the printed shell line, run as the user would paste it (its stderr: ours)
                shell = line[len(COMMAND_PREFIX) :].strip()
                drivers.append(subprocess.Popen(["sh", "-c", shell], start_new_session=True))
        suite.wait(timeout=240)
        codes = [driver.wait(timeout=20) for driver in drivers]
    finally:
        for process in (suite, *drivers):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)
    output = "".join(seen)
    assert len(drivers) >= 3, (
        f"expected a command line per driver session, got {len(drivers)}: {output[-3000:]}"
    )
    assert codes == [0] * len(drivers), (
        f"expected every attached driver to exit 0 at the end of its input, got {codes}"
    )
    report = json.loads((tmp_path / "out" / "conformance-report.json").read_text())
    ran = {row["id"]: row["status"] for row in report["scenarios"] if row["status"] != "not-run"}
    for sid in ("3.1.1.a", "3.1.2.a", "4.1.1.a"):
        assert ran.get(sid) == "passed", (
            f"expected {sid} to pass on attached drivers, got {ran}; {output[-3000:]}"
        )
    assert suite.returncode == 0, output[-3000:]
