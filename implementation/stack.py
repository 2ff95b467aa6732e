"""Run the whole reference stack on the embedded simulated exchange, for a look at the dashboard:

    python -m implementation.stack [--http-port 8080] [--grpc-port 50051] [--keep-logs]

Starts exchange_connector (--exchange sim), market_maker and live_server as child processes, with
config files and logs in a temporary folder, waits until each is ready, prints the dashboard URL,
and on Ctrl-C (or SIGTERM) stops them in reverse order with SIGTERM, expecting exit code 0 from
each. A child that exits early is reported with the last lines of its log.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
TAIL_LINES = 15
PR_SET_PDEATHSIG = 1  # prctl(2)


class StackError(RuntimeError):
    """The stack could not start or stop cleanly; the message says which program and why."""


@dataclass
class Child:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: object | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        log_file = self.log_path.open("wb")
        self._log_file = log_file
        # Own session: a Ctrl-C in the terminal reaches only this command, which then stops the
        # children in order instead of all of them at once.
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, preexec_fn=_stop_with_parent,
        )  # fmt: skip

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.tail(10_000):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found

    def tail(self, lines: int = TAIL_LINES) -> list[str]:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait; kill if it overruns (returns its exit code; -9 when killed)."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        return process.returncode

    def failure(self, what: str) -> str:
        shown = "\n".join(f"    {line}" for line in self.tail()) or "    (empty log)"
        return f"{self.name} {what}; last lines of {self.log_path}:\n{shown}"


def _stop_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when this command dies, even by SIGKILL, so
    no program outlives the stack (elsewhere the orderly stop is all there is)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Stack:
    def __init__(self, workdir: Path, *, host: str, grpc_port: int, http_port: int, python: str) -> None:
        self.workdir = workdir
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.connector_address = f"{host}:{grpc_port}"
        self.url = f"http://{host}:{http_port}/"
        mm_config = workdir / "market_maker.yaml"
        ls_config = workdir / "live_server.yaml"
        mm_config.write_text(
            f'current_exchange: remote\nexchange_grpc_address: "{self.connector_address}"\n'
            "log: {level: info, format: json}\n",
            encoding="utf-8",
        )
        ls_config.write_text(
            f'exchange_type: remote\nexchange_grpc_address: "{self.connector_address}"\n'
            f'listen: "{host}:{http_port}"\nlog: {{level: info, format: json}}\n',
            encoding="utf-8",
        )
        module = [python, "-m"]
        self.children = [
            Child(
                "exchange_connector",
                [*module, "implementation.connector", "serve", "--listen", self.connector_address,
                 "--exchange", "sim", "--log-format", "json"],
                workdir / "exchange_connector.log",
            ),
            Child("market_maker", [*module, "implementation.market_maker", "--config", str(mm_config)],
                  workdir / "market_maker.log"),
            Child("live_server", [*module, "implementation.live_server", "--config", str(ls_config)],
                  workdir / "live_server.log"),
        ]  # fmt: skip

    def start(self, stopping: StopRequest) -> None:
        """Start the children one after the other, each once the one before is ready."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        checks: dict[str, Callable[[Child], bool]] = {
            "exchange_connector": lambda child: bool(child.events("ready")),
            "market_maker": lambda child: bool(child.events("ready")),
            "live_server": lambda child: http_ok(self.url + "health"),
        }
        for child in self.children:
            child.start(env)
            self._wait_ready(child, checks[child.name], stopping)
            print(f"  {child.name:<19} ready (pid {child.process.pid if child.process else '?'})", flush=True)

    def _wait_ready(self, child: Child, ready: Callable[[Child], bool], stopping: StopRequest) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not stopping.is_set():
            if (code := child.exit_code) is not None:
                raise StackError(child.failure(f"exited with code {code} while starting"))
            if ready(child):
                return
            if time.monotonic() > deadline:
                raise StackError(child.failure(f"was not ready after {READY_TIMEOUT_S:g} s"))
            time.sleep(0.1)

    def watch(self, stopping: StopRequest) -> None:
        """Until asked to stop; StackError if a child dies meanwhile."""
        while not stopping.wait(0.25):
            for child in self.children:
                if (code := child.exit_code) is not None:
                    raise StackError(child.failure(f"exited unexpectedly with code {code}"))

    def stop(self) -> list[str]:
        """Stop every child, clients first; the problems found (empty when all exited 0)."""
        problems = []
        for child in reversed(self.children):
            if child.process is None:
                continue
            running = child.exit_code is None
            code = child.stop()
            if running:
                print(f"  {child.name:<19} stopped (exit code {code})", flush=True)
            if code != 0 and running:
                problems.append(child.failure(f"exited with code {code} on SIGTERM"))
        return problems


class StopRequest:
    """Set by SIGINT or SIGTERM. A plain flag, not a threading.Event: the handler runs on the main
    thread between two bytecodes, possibly while that thread holds the Event's own lock inside
    wait(), and Event.set() would then wait for it forever (a stack deaf to Ctrl-C)."""

    POLL_S = 0.05

    def __init__(self) -> None:
        self._requested = False

    def set(self) -> None:
        self._requested = True

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout: float) -> bool:
        """Whether a stop was requested within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, self.POLL_S))
        return self._requested


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m implementation.stack",
        description="Run exchange_connector (simulated exchange), market_maker and live_server together.",
    )
    parser.add_argument("--http-port", type=int, default=8080, help="live_server's HTTP port (default 8080)")
    parser.add_argument(
        "--grpc-port", type=int, default=50051, help="the connector's gRPC port (default 50051)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="the loopback address to use (default 127.0.0.1)")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary folder with logs and configs"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, port in (("--http-port", args.http_port), ("--grpc-port", args.grpc_port)):
        if not 1 <= port <= 65535:
            print(f"stack: {flag} {port} is out of range 1-65535", file=sys.stderr)
            return 2
        if not port_is_free(args.host, port):
            print(f"stack: port {port} on {args.host} is in use; choose another with {flag}", file=sys.stderr)
            return 2
    if args.http_port == args.grpc_port:
        print("stack: --http-port and --grpc-port must differ", file=sys.stderr)
        return 2

    stopping = StopRequest()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workdir = Path(tempfile.mkdtemp(prefix="exchange-stack-"))
    stack = Stack(
        workdir, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port, python=sys.executable
    )
    problems: list[str] = []
    try:
        print(f"Starting the stack (logs in {workdir})", flush=True)
        stack.start(stopping)
        if not stopping.is_set():
            print(
                f"\nDashboard: {stack.url}\nAPI:       {stack.url}api/account  {stack.url}api/positions",
                flush=True,
            )
            print(
                f"Connector: {stack.connector_address} (gRPC, simulated exchange)\n\nPress Ctrl-C to stop.",
                flush=True,
            )
            stack.watch(stopping)
    except StackError as exc:
        problems.append(str(exc))
    finally:
        print("\nStopping...", flush=True)
        problems += stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for problem in problems:
        print(f"stack: {problem}", file=sys.stderr)
    if problems or args.keep_logs:
        print(f"Logs kept in {workdir}", file=sys.stderr if problems else sys.stdout)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
