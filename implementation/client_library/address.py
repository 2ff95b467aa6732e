"""The address a RemoteExchange dials: host:port, [IPv6]:port or unix:path, checked before any I/O
so that a typo fails at once with a message naming the address and the accepted forms."""

from __future__ import annotations

import ipaddress
import re

EXPECTED_FORMS = "expected host:port, [::1]:port or unix:path"
# Underscores are not DNS-legal but Docker Compose service names use them, and they resolve there.
HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
PORT = re.compile(r"^[0-9]+$")


def check_address(address: str) -> str:
    """The address (surrounding blanks removed) if it is host:port, [v6]:port or unix:path; else ValueError
    naming the address and the expected forms."""
    text = address.strip() if isinstance(address, str) else ""
    if not text:
        raise ValueError("exchange address is empty; " + EXPECTED_FORMS)
    reason = _address_problem(text)
    if reason is not None:
        raise ValueError(f"exchange address {address!r} is malformed: {reason}; {EXPECTED_FORMS}")
    return text


def _address_problem(text: str) -> str | None:
    if text.startswith("unix:"):
        return None if text[len("unix:") :].strip("/") else "the unix socket path is empty"
    if "://" in text:
        return "a URL scheme is not expected"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            return "an IPv6 address in brackets must be followed by :port"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return _port_problem(port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return "the :port is missing"
    if ":" in host:
        return "an IPv6 address must be written in brackets"
    if not host:
        return "the host is missing"
    if all(part.isdigit() for part in host.split(".")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
    elif len(host) > 253 or not all(HOSTNAME_LABEL.match(label) for label in host.split(".")):
        return f"{host!r} is not a host name"
    return _port_problem(port)


def _port_problem(port: str) -> str | None:
    if not port:
        return "the port is missing"
    if not PORT.match(port):
        return f"port {port!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {port} is out of range 1-65535"
    return None
