"""`python -m implementation.stack`: the three programs on the simulated exchange, the dashboard
URL printed, and a clean stop of all three on Ctrl-C."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


class Output:
    """The lines a child prints, collected by a thread (a pipe read must not block the test)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if marker in line:
                return "".join(self.seen)
        raise AssertionError(f"expected {marker!r} within {timeout} s, got:\n{''.join(self.seen)}")

    def rest(self, timeout: float) -> str:
        self._thread.join(timeout)
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


@pytest.mark.timeout(90)
def test_stack_starts_serves_and_stops_cleanly_on_ctrl_c() -> None:
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "implementation.stack",
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        started = output.until("Press Ctrl-C", timeout=60)
        assert f"Dashboard: http://127.0.0.1:{http_port}/" in started, (
            f"expected the dashboard URL, got:\n{started}"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/account", timeout=5) as response:
            account = json.loads(response.read())
        assert account["total_balance"], f"expected an account from the simulated exchange, got {account}"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=40)
    finally:
        if process.poll() is None:  # a failed check: stop it the way a user would, kill as a last resort
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            printed = output.rest(timeout=5)
            process.stdout.close()
    assert process.returncode == 0, f"expected exit code 0, got {process.returncode}:\n{printed}"
    for name in ("live_server", "market_maker", "exchange_connector"):
        stopped = [line for line in printed.splitlines() if name in line and "stopped (exit code 0)" in line]
        assert stopped, f"expected {name} stopped with exit code 0, got:\n{printed}"


@pytest.mark.timeout(30)
def test_stack_refuses_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "implementation.stack",
                "--http-port",
                str(port),
                "--grpc-port",
                str(free_port()),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 2, f"expected exit code 2, got {result.returncode}: {result.stderr}"
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr, (
        f"expected the port named, got {result.stderr!r}"
    )
