"""Port checks: a listener makes a port busy; connections a stopped server left behind do not."""

from __future__ import annotations

import socket
import time

from harness.ports import PortAllocator, is_free


def test_a_listening_port_is_busy_and_free_once_closed() -> None:
    port = PortAllocator().allocate()
    listener = socket.create_server(("127.0.0.1", port))
    try:
        assert not is_free(port)
    finally:
        listener.close()
    assert is_free(port)


def test_a_server_stopped_with_connections_in_time_wait_can_restart_on_its_port() -> None:
    port = PortAllocator().allocate()
    listener = socket.create_server(("127.0.0.1", port))
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first, so its end of the connection waits in TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    time.sleep(0.05)
    with open("/proc/net/tcp") as table:  # state 06 is TIME_WAIT
        waiting = [
            line for line in table if f":{port:04X} " in line.split()[1] + " " and line.split()[3] == "06"
        ]
    assert waiting, "the test needs a TIME_WAIT connection on the port"
    assert is_free(port)
