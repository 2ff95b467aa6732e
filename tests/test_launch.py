"""The program launcher, proven with tiny throwaway programs: readiness by gRPC health, HTTP and
log event; the one-line reasons a start fails; SIGTERM, kill, and nothing left running."""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.ports import free_port
from harness.sut.launch import (
    EventNotSeen,
    ProgramLauncher,
    ProgramNotReady,
    ProgramStopFailed,
    RunningProgram,
)
from harness.sut.manifest import Manifest, load_manifest

pytestmark = pytest.mark.timeout(30)

# One script plays every program: argv = port, mode, [argument]; $TINY_MODE overrides the mode.
# Its log is JSON lines on stderr.
PROGRAM = r"""
import json, os, signal, subprocess, sys, threading, time

def log(event, **values):
    line = {"ts": time.time(), "level": "info", "logger": "tiny", "event": event, **values}
    print(json.dumps(line), file=sys.stderr, flush=True)

# the handler first: SIGTERM may come as soon as "ready" is logged
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())

def until_sigterm():
    while not stop.wait(0.05):
        pass
    log("shutdown_complete")

port, mode = int(sys.argv[1]), os.environ.get("TINY_MODE") or sys.argv[2]
argument = sys.argv[3] if len(sys.argv) > 3 else ""
if mode == "exit3":
    log("starting")
    log("config_error", level="error", message="--listen: 'nowhere' is not HOST:PORT")
    sys.exit(3)
elif mode == "silent":
    log("starting")
    time.sleep(60)
elif mode in ("serving", "not-serving"):
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    status = "SERVING" if mode == "serving" else "NOT_SERVING"
    servicer.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(status))
    log("ready", port=port)
    until_sigterm()
    server.stop(0).wait()
elif mode == "log":
    config = open(argument).read()
    log("ready", config=config)
    for balance in ("1", "2", "3"):
        log("account_update", total_balance=balance)
    until_sigterm()
elif mode == "term-exit-1":
    log("ready")
    until_sigterm()
    log("shutdown_failed", level="error", message="could not flush state")
    sys.exit(1)
elif mode == "no-handler":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log("ready")
    time.sleep(60)
elif mode == "crash":
    log("ready")
    time.sleep(0.1)
    log("upstream_lost", level="error", message="no route to exchange")
    sys.exit(4)
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    log("ready", child=child.pid)
    time.sleep(60)
elif mode == "http":
    import http.server
    code = int(argument)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok" if code == 200 else "not ready", "reason": "no data yet"})
            self.send_response(code if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log("ready", port=port)
    server.serve_forever()
"""

MANIFEST = """
name = "tiny"
[programs.exchange_connector]
command = ["{python}", "{root}/program.py", "{grpc_port}"]
ready = "grpc-health"
stop_timeout_s = 5
[programs.market_maker]
command = ["{python}", "{root}/program.py", "0", "log", "{config}"]
config = "exchange_grpc_address: {connector}\\n"
ready = "log:ready"
[programs.live_server]
command = ["{python}", "{root}/program.py", "{http_port}", "http"]
ready = "http:/health"
"""


def write_manifest(folder: Path) -> Manifest:
    (folder / "program.py").write_text(PROGRAM)
    path = folder / "sut.toml"
    path.write_text(MANIFEST)
    return load_manifest(path)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return write_manifest(tmp_path)


@pytest.fixture
def launcher(manifest: Manifest, tmp_path: Path) -> Iterator[ProgramLauncher]:
    programs = ProgramLauncher(manifest, tmp_path / "run")
    try:
        yield programs
    finally:
        programs.stop_all()


def gone(pid: int, within: float = 5.0) -> bool:
    """True once `pid` no longer runs (a zombie awaiting its parent's reaping counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_grpc_health_program_becomes_ready_and_stops_with_exit_code_0(launcher: ProgramLauncher) -> None:
    port = free_port()
    program = launcher.start("exchange_connector", {"grpc_port": port}, extra_args=["serving"])
    assert program.running, f"expected the program running once ready, got {program!r}"
    assert program.address == f"127.0.0.1:{port}"
    ready = program.events("ready")
    assert [event["port"] for event in ready] == [port], f"expected one ready event for {port}, got {ready}"
    code = program.stop()
    assert code == 0, f"expected exit code 0 after SIGTERM, got {code}; {program.tail()}"
    assert program.events("shutdown_complete"), (
        f"expected a shutdown_complete event, got {program.log_lines()}"
    )
    assert gone(program.pid), f"expected pid {program.pid} gone after stop()"
    assert program.stop() == 0, "expected a second stop() to be harmless"


def test_exit_before_ready_names_the_exit_code_and_the_last_log_lines(launcher: ProgramLauncher) -> None:
    with pytest.raises(ProgramNotReady) as failure:
        launcher.start("exchange_connector", {"grpc_port": free_port()}, extra_args=["exit3"])
    message = str(failure.value)
    assert message.startswith(
        "exchange_connector exited with code 3 before becoming ready; last log lines"
    ), f"expected the exit code first, got {message!r}"
    assert "--listen: 'nowhere' is not HOST:PORT" in message, f"expected the last log line, got {message!r}"
    assert failure.value.exit_code == 3
    assert launcher.programs == [], f"expected no program kept, got {launcher.programs}"


def test_port_in_use_is_reported_and_nothing_is_started(launcher: ProgramLauncher, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ProgramNotReady) as failure:
            launcher.start("exchange_connector", {"grpc_port": port}, extra_args=["serving"])
    message = str(failure.value)
    assert message.startswith(f"exchange_connector: port {port} ({{grpc_port}}) is in use on 127.0.0.1"), (
        f"expected the port named first, got {message!r}"
    )
    assert "the program was not started" in message
    assert not list((tmp_path / "run").glob("*/stderr.log")), "expected no process spawned"


def test_nothing_listening_is_reported_as_connection_refused(
    launcher: ProgramLauncher, tmp_path: Path
) -> None:
    port = free_port()
    with pytest.raises(ProgramNotReady) as failure:
        launcher.start("exchange_connector", {"grpc_port": port}, extra_args=["silent"], ready_timeout=1.0)
    message = str(failure.value)
    assert re.match(
        rf"exchange_connector: connection refused on 127\.0\.0\.1:{port} after 1\.\d s ", message
    ), f"expected 'connection refused' first, got {message!r}"
    assert "s (nothing listening); last log lines" in message and '"event": "starting"' in message
    assert not (left := _running_children(tmp_path)), f"expected the silent program killed, got {left}"


def test_not_serving_times_out_naming_the_health_status(launcher: ProgramLauncher, tmp_path: Path) -> None:
    with pytest.raises(ProgramNotReady) as failure:
        launcher.start(
            "exchange_connector", {"grpc_port": free_port()}, extra_args=["not-serving"], ready_timeout=3.0
        )
    message = str(failure.value)
    # 3 s: time enough, even on a loaded machine, for the program to be listening and answer
    assert re.match(r"exchange_connector: readiness timed out after 3\.\d s ", message), f"got {message!r}"
    assert "s (health NOT_SERVING); last log lines" in message, f"expected the health status, got {message!r}"
    assert not (left := _running_children(tmp_path)), f"expected the program killed, got {left}"


def test_http_readiness_waits_for_200_and_reports_the_last_answer(launcher: ProgramLauncher) -> None:
    port = free_port()
    program = launcher.start("live_server", {"http_port": port}, extra_args=["200"])
    assert program.http_url == f"http://127.0.0.1:{port}"
    assert program.stop() == 0
    with pytest.raises(ProgramNotReady) as failure:
        launcher.start("live_server", {"http_port": free_port()}, extra_args=["503"], ready_timeout=2.0)
    message = str(failure.value)
    assert re.match(r"live_server: readiness timed out after 2\.\d s ", message), f"got {message!r}"
    assert 'GET /health answered 503: {"status": "not ready", "reason": "no data yet"}' in message, message


def test_log_readiness_config_template_and_events(launcher: ProgramLauncher) -> None:
    program = launcher.start("market_maker", {"connector": "127.0.0.1:5"})
    assert program.events("ready")[0]["config"] == "exchange_grpc_address: 127.0.0.1:5\n"
    update = program.wait_for_event("account_update", lambda event: event["total_balance"] == "3", timeout=5)
    assert update["total_balance"] == "3"
    balances = [event["total_balance"] for event in program.events("account_update")]
    assert balances == ["1", "2", "3"], f"expected the updates in order, got {balances}"
    with pytest.raises(EventNotSeen) as missing:
        program.wait_for_event("account_update", lambda event: event["total_balance"] == "4", timeout=0.3)
    message = str(missing.value)
    assert message.startswith(
        "market_maker: no 'account_update' event matching the condition within 0.3 s (3 'account_update' event(s)"
    ), f"got {message!r}"


def test_sigterm_ignoring_program_is_killed_with_its_children_and_reported(launcher: ProgramLauncher) -> None:
    program = tiny(launcher, "ignore-term")
    child = int(program.events("ready")[0]["child"])
    with pytest.raises(ProgramStopFailed) as failure:
        program.stop(timeout=0.5)
    message = str(failure.value)
    assert message.startswith(
        f"market_maker (pid {program.pid}) did not exit within 0.5 s of SIGTERM; killed"
    ), f"got {message!r}"
    assert gone(program.pid), f"expected pid {program.pid} killed"
    assert gone(child), f"expected its child {child} killed with the process group"


def test_without_waiting_for_readiness_the_exit_code_is_read_with_wait(launcher: ProgramLauncher) -> None:
    failing = launcher.start(
        "exchange_connector", {"grpc_port": free_port()}, extra_args=["exit3"], wait_ready=False
    )
    assert failing.wait(10) == 3, f"expected exit code 3, got {failing.returncode}"
    assert failing.state == f"pid {failing.pid}, exited with code 3"
    silent = launcher.start(
        "exchange_connector", {"grpc_port": free_port()}, extra_args=["silent"], wait_ready=False
    )
    with pytest.raises(
        TimeoutError, match=rf"exchange_connector \(pid {silent.pid}\) still running after 0.1 s"
    ):
        silent.wait(0.1)
    assert silent.kill() == -9
    assert silent.state == f"pid {silent.pid}, was killed by signal SIGKILL"


def tiny(launcher: ProgramLauncher, mode: str) -> RunningProgram:
    """The tiny market_maker in one of its TINY_MODEs."""
    return launcher.start("market_maker", {"connector": "127.0.0.1:5"}, env={"TINY_MODE": mode})


def stop_failure(launcher: ProgramLauncher, program: RunningProgram, says: str) -> str:
    """What stop_all() says failed: it must start by naming `program` and saying `says`."""
    with pytest.raises(ProgramStopFailed) as failure:
        launcher.stop_all()
    message = str(failure.value)
    assert message.startswith(f"market_maker (pid {program.pid}) {says}"), f"got {message!r}"
    return message


def test_teardown_requires_exit_code_0_after_sigterm(launcher: ProgramLauncher) -> None:
    program = tiny(launcher, "term-exit-1")
    says = "exited with code 1 after SIGTERM, expected a clean exit with code 0;"
    message = stop_failure(launcher, program, says)
    assert "could not flush state" in message, f"expected the last log lines, got {message!r}"


def test_teardown_names_a_program_without_a_sigterm_handler(launcher: ProgramLauncher) -> None:
    program = tiny(launcher, "no-handler")
    handler = "was ended by SIGTERM's default action (no handler installed?)"
    stop_failure(launcher, program, f"{handler} after SIGTERM, expected a clean exit with code 0;")


def test_teardown_reports_a_program_that_died_during_the_test(launcher: ProgramLauncher) -> None:
    program = tiny(launcher, "crash")
    deadline = time.monotonic() + 10
    while program.running and time.monotonic() < deadline:
        time.sleep(0.02)
    says = "exited with code 4 during the test, unexpectedly (nothing stopped it);"
    assert "no route to exchange" in stop_failure(launcher, program, says), "expected the last log lines"


def test_a_relative_command_path_is_taken_from_the_manifest_folder(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(f"#!{sys.executable}\n" + PROGRAM)
    script.chmod(0o755)
    path = tmp_path / "relative.toml"
    path.write_text(MANIFEST.replace('"{python}", "{root}/program.py"', '"./program.py"'))
    launcher = ProgramLauncher(load_manifest(path), tmp_path / "run")
    try:
        program = launcher.start("exchange_connector", {"grpc_port": free_port()}, extra_args=["serving"])
        assert program.args[0] == str(script), f"expected {script}, got {program.args[0]}"
    finally:
        launcher.stop_all()


def test_a_failing_test_leaves_nothing_running_and_shows_the_logs(pytester: pytest.Pytester) -> None:
    manifest = write_manifest(pytester.path)
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:asyncio -p no:cacheprovider\n")
    pid_file = pytester.path / "pid"
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            f"""
            from harness.ports import free_port

            def test_fails(launcher):
                program = launcher.start("exchange_connector", {{"grpc_port": free_port()}}, extra_args=["serving"])
                open({str(pid_file)!r}, "w").write(str(program.pid))
                assert 1 == 2, "the test fails on purpose"
            """
        )
    )
    result = pytester.runpytest("--sut", str(manifest.path), "--report-dir", str(pytester.path / "reports"))
    result.assert_outcomes(failed=1)
    pid = int(pid_file.read_text())
    assert gone(pid), f"expected pid {pid} stopped after the failing test"
    output = result.stdout.str()
    assert "program logs" in output, f"expected the program logs section, got:\n{output}"
    assert '"event": "ready"' in output and '"event": "shutdown_complete"' not in output, output


_CHILDREN_BEFORE_TEST: set[int] = set()


@pytest.fixture(autouse=True)
def _note_children_before_test() -> None:
    """Programs other fixtures of the session keep running (e.g. a benchmark baseline) are not this test's."""
    _CHILDREN_BEFORE_TEST.clear()
    _CHILDREN_BEFORE_TEST.update(p.pid for p in psutil.Process().children(recursive=True))


def _running_children(folder: Path) -> list[str]:
    """Child processes started during this test from the program in `folder` and still running
    (in a whole run, the fault matrix's runs go on beside the test: they are not its)."""
    children = psutil.Process().children(recursive=True)
    running = []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if (
                child.pid not in _CHILDREN_BEFORE_TEST
                and child.status() != psutil.STATUS_ZOMBIE
                and any(str(folder) in arg for arg in child.cmdline())
            ):
                running.append(f"{child.pid} {child.cmdline()}")
    return running
