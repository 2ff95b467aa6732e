"""Unfinished HTTP requests held open against a server, as a slowloris client does."""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Iterator

CONNECT_TIMEOUT_S = 5.0
PARTIAL_HEAD = b"GET /api/account HTTP/1.1\r\nHost: 127.0.0.1\r\n"


class HeldRequests:
    """Sockets that each began a request and never finish its head."""

    def __init__(self) -> None:
        self.open: set[socket.socket] = set()
        self.closed = 0
        self.opened_total = 0
        self._selector = selectors.DefaultSelector()
        self.opened_at = time.monotonic()

    def start(self, port: int, count: int) -> None:
        for _ in range(count):
            self.open_one(port)
        self.opened_at = time.monotonic()

    def open_one(self, port: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
        try:
            sock.sendall(PARTIAL_HEAD)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        except OSError:
            sock.close()
            raise
        self.open.add(sock)
        self.opened_total += 1

    def poll(self, timeout: float) -> None:
        """Note the sockets the server has closed (EOF or reset) within `timeout` s."""
        for key, _ in self._selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # an answer (e.g. 408) is read on; the close is what counts
                self._drop(sock)

    def trickle(self) -> None:
        for sock in list(self.open):
            try:
                sock.send(b"X-Padding: 1\r\n")
            except BlockingIOError:
                pass
            except OSError:
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        if sock in self.open:
            self._selector.unregister(sock)
            self.open.discard(sock)
            sock.close()
            self.closed += 1

    def close(self) -> None:
        for sock in list(self.open):
            self._selector.unregister(sock)
            sock.close()
        self.open.clear()
        self._selector.close()


@contextlib.contextmanager
def held_requests(port: int, count: int) -> Iterator[HeldRequests]:
    held = HeldRequests()
    try:
        held.start(port, count)
        yield held
    finally:
        held.close()
