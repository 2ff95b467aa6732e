"""Unfinished HTTP requests held open against a server, as a slowloris client does."""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Iterator

CONNECT_TIMEOUT_S = 5.0
PARTIAL_HEAD = b"GET /api/account HTTP/1.1\r\nHost: 127.0.0.1\r\n"
FIRST_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
MAX_ANSWER_BYTES = 1 << 20


class HeldRequests:
    """Sockets that each began a request and never finish its head: on a fresh connection, or
    (kept_alive) as the second request of a connection whose first one was answered."""

    def __init__(self) -> None:
        self.open: set[socket.socket] = set()
        self.kept_alive: set[socket.socket] = set()
        self.closed = 0
        self.opened_total = 0
        self._selector = selectors.DefaultSelector()
        self.opened_at = time.monotonic()

    def start(self, port: int, count: int, kept_alive: int = 0) -> None:
        for _ in range(count):
            self.open_one(port)
        for _ in range(kept_alive):
            self.open_one(port, after_a_request=True)
        self.opened_at = time.monotonic()

    def open_one(self, port: int, *, after_a_request: bool = False) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
        try:
            if after_a_request:
                sock.sendall(FIRST_REQUEST)
                _read_answer(sock)
            sock.sendall(PARTIAL_HEAD)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        except OSError:
            sock.close()
            raise
        self.open.add(sock)
        if after_a_request:
            self.kept_alive.add(sock)
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
            self.kept_alive.discard(sock)
            sock.close()
            self.closed += 1

    def close(self) -> None:
        for sock in list(self.open):
            self._selector.unregister(sock)
            sock.close()
        self.open.clear()
        self.kept_alive.clear()
        self._selector.close()


def _read_answer(sock: socket.socket) -> None:
    """Read one whole HTTP answer (its head, then a Content-Length or chunked body), so the next
    bytes sent start a new request on the same connection; an early close ends the read."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_ANSWER_BYTES:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(
        (name.strip().lower(), value.strip().lower())
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    chunked = b"chunked" in fields.get(b"transfer-encoding", b"")
    length = int(fields.get(b"content-length", b"0") or 0)
    while len(body) < MAX_ANSWER_BYTES and (
        not body.endswith(b"0\r\n\r\n") if chunked else len(body) < length
    ):
        chunk = sock.recv(65536)
        if not chunk:
            return
        body += chunk


@contextlib.contextmanager
def held_requests(port: int, count: int, kept_alive: int = 0) -> Iterator[HeldRequests]:
    held = HeldRequests()
    try:
        held.start(port, count, kept_alive)
        yield held
    finally:
        held.close()
