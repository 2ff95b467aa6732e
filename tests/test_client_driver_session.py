"""The harness's side of the client-driver protocol: the manifest's optional [programs.client_driver],
and a DriverSession that tells a driver breaking the protocol apart (no `ready`, lines that are not
events, no exit at end of input) and never leaves one running."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from harness.sut.client_driver import DriverFailure, DriverSession, start_driver
from harness.sut.manifest import DEFAULT_MANIFEST, ManifestError, load_manifest

pytestmark = pytest.mark.timeout(60)

PROGRAMS = DEFAULT_MANIFEST.read_text(encoding="utf-8").split("[programs.client_driver]", 1)[0]
PROGRAMS = "[programs.exchange_connector]" + PROGRAMS.split("[programs.exchange_connector]", 1)[1]


def manifest(folder: Path, capabilities: str, driver: str) -> Path:
    path = folder / "sut.toml"
    path.write_text(f'name = "t"\ncapabilities = {capabilities}\n{PROGRAMS}\n{driver}\n', encoding="utf-8")
    return path


def script_driver(folder: Path, body: str) -> Path:
    """A manifest whose client driver is this Python script."""
    script = folder / "driver.py"
    script.write_text(body, encoding="utf-8")
    return manifest(
        folder, '["client_library"]', f'[programs.client_driver]\ncommand = ["{{python}}", "{script}"]'
    )


def test_client_library_needs_a_driver_and_the_driver_is_optional(tmp_path: Path) -> None:
    with pytest.raises(
        ManifestError, match=r"capability 'client_library' needs a \[programs.client_driver\]"
    ):
        load_manifest(manifest(tmp_path, '["client_library"]', ""))
    without = load_manifest(manifest(tmp_path, "[]", ""))
    assert not without.has_program("client_driver")
    with pytest.raises(ManifestError, match=r"client_driver.ready must be 'stdio'"):
        load_manifest(
            manifest(
                tmp_path, "[]", '[programs.client_driver]\ncommand = ["{python}"]\nready = "grpc-health"'
            )
        )
    reference = load_manifest(DEFAULT_MANIFEST)
    assert reference.has_capability("client_library") and reference.program("client_driver").ready == "stdio"


def test_the_reference_driver_answers_and_exits_at_end_of_input(tmp_path: Path) -> None:
    session = start_driver(load_manifest(DEFAULT_MANIFEST), tmp_path, "self-test")
    try:
        assert session.ready["event"] == "ready"
        answer = session.call("connect", 5.0, "D12", address="")
        assert (answer["event"], answer["kind"]) == ("error", "empty_address")
    finally:
        session.close()
    assert session.returncode == 0


def test_a_driver_without_ready_is_refused(tmp_path: Path) -> None:
    path = script_driver(
        tmp_path, 'print(\'{"event": "hello", "t_ms": 1}\', flush=True)\nimport time; time.sleep(30)\n'
    )
    started = time.monotonic()
    with pytest.raises(DriverFailure, match=r"rule D1.*expected `ready` as the first event"):
        start_driver(load_manifest(path), tmp_path / "run", "self-test")
    assert time.monotonic() - started < 10.0


def test_a_driver_that_ignores_end_of_input_is_killed_and_named(tmp_path: Path) -> None:
    path = script_driver(
        tmp_path,
        'import signal, time\nprint(\'{"event": "ready", "t_ms": 0}\', flush=True)\n'
        "print('not json', flush=True)\ntime.sleep(60)\n",
    )
    session = start_driver(load_manifest(path), tmp_path / "run", "self-test")
    started = time.monotonic()
    with pytest.raises(DriverFailure, match=r"rule D8.*exit 0 within 5 s"):
        session.close()
    assert time.monotonic() - started < 8.0 and session.returncode is not None
    assert session.protocol_errors == ["not an event object: 'not json'"]


def test_waiting_for_an_event_that_never_comes_names_the_rule(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-c",
        'print(\'{"event": "ready", "t_ms": 0}\', flush=True); import sys; sys.stdin.read()',
    ]
    session = DriverSession(args, tmp_path, {})
    try:
        session.wait_for(lambda e: True, 5.0, "ready", "D1")
        with pytest.raises(
            DriverFailure,
            match=r"\(rule D30\): expected an answer .* to command c1, got nothing within 0.3 s",
        ):
            session.outcome(session.send("subscribe_account"), 0.3, "D30")
    finally:
        session.close()


def test_an_unsupported_command_fails_the_scenario_saying_so(tmp_path: Path) -> None:
    answer = (
        "import json, sys\n"
        "print(json.dumps({'event': 'ready', 't_ms': 0}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    command = json.loads(line)\n"
        "    print(json.dumps({'event': 'error', 'id': command['id'], 't_ms': 1, 'kind': 'unsupported',\n"
        "                      'message': 'per-call deadlines are not supported'}), flush=True)\n"
    )
    session = DriverSession([sys.executable, "-c", answer], tmp_path, {}, scenario="3.1.2.d")
    try:
        session.wait_for(lambda e: True, 5.0, "ready", "D1")
        outcome = session.outcome(session.send("get_account", deadline_ms=100), 5.0, "D20")
        with pytest.raises(
            DriverFailure,
            match=r"\[3.1.2.d\] \(rule D5\): the client library cannot do what the scenario needs "
            r"\(to call GetAccount; rule D21\): the driver answered `unsupported`: per-call deadlines",
        ):
            session.expect(outcome, "result", "D21", "to call GetAccount")
    finally:
        session.close()
