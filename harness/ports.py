"""Free loopback ports for tests, safe under pytest-xdist.

A server the test starts in-process binds port 0 and reads the bound port back. A child program
must be told its port before it binds, so the harness hands out ports from a range below the
kernel's ephemeral range (where outgoing connections never land), split between xdist workers,
and checks each one is bindable right now.
"""

from __future__ import annotations

import os
import socket
import threading

RANGE_START = 20000
RANGE_END = 32000  # below Linux's default ephemeral range (32768-60999)


def _worker_slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    width = (RANGE_END - RANGE_START) // max(count, 1)
    start = RANGE_START + index * width
    return start, start + width


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind: connections of a stopped server left in TIME_WAIT do not make the port
        # busy for its restart, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out distinct, currently free ports of this worker's slice."""

    def __init__(self) -> None:
        self._start, self._end = _worker_slice()
        self._next = self._start + (os.getpid() * 7919) % (self._end - self._start)
        self._lock = threading.Lock()

    def allocate(self, host: str = "127.0.0.1") -> int:
        with self._lock:
            for _ in range(self._end - self._start):
                port = self._next
                self._next = self._next + 1 if self._next + 1 < self._end else self._start
                if is_free(port, host):
                    return port
        raise RuntimeError(f"no free port in {self._start}-{self._end} on {host}")


_ALLOCATOR = PortAllocator()


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that is free now and that no other test of this run was given recently."""
    return _ALLOCATOR.allocate(host)
