"""The addresses RemoteExchange accepts and the ones it refuses, with the reason it gives."""

from __future__ import annotations

import pytest

from implementation.client_library.remote_exchange import RemoteExchange, check_address


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("localhost:1", "localhost:1"),
        ("localhost:65535", "localhost:65535"),
        ("exchange-connector.internal:443", "exchange-connector.internal:443"),
        ("exchange_connector:50051", "exchange_connector:50051"),  # a Docker Compose service name
        ("[::1]:50051", "[::1]:50051"),
        ("[fe80::1%eth0]:50051", "[fe80::1%eth0]:50051"),
        ("[2001:db8::7]:8080", "[2001:db8::7]:8080"),
        ("unix:/run/exchange.sock", "unix:/run/exchange.sock"),
        ("unix:///run/exchange.sock", "unix:///run/exchange.sock"),
        ("unix:relative.sock", "unix:relative.sock"),
        ("  127.0.0.1:50051\n", "127.0.0.1:50051"),
    ],
)
def test_accepted_addresses(address: str, normalised: str) -> None:
    assert check_address(address) == normalised, f"expected {address!r} accepted as {normalised!r}"
    assert RemoteExchange(address).address == normalised


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("localhost", "the :port is missing"),
        ("127.0.0.1", "the :port is missing"),
        ("localhost:", "the port is missing"),
        (":50051", "the host is missing"),
        ("host:notaport", "port 'notaport' is not a number"),
        ("host:-1", "port '-1' is not a number"),
        ("host:5e4", "port '5e4' is not a number"),
        ("host:²", "port '²' is not a number"),
        ("host:0", "port 0 is out of range 1-65535"),
        ("host:99999", "port 99999 is out of range 1-65535"),
        ("host:1234567", "port 1234567 is out of range 1-65535"),
        ("http://x", "a URL scheme is not expected"),
        ("https://exchange:443", "a URL scheme is not expected"),
        ("dns:///exchange:443", "a URL scheme is not expected"),
        ("::1:50051", "an IPv6 address must be written in brackets"),
        ("[::1]", "must be followed by :port"),
        ("[::1]50051", "must be followed by :port"),
        ("[not-v6]:50051", "'not-v6' is not an IPv6 address"),
        ("[::1]:abc", "port 'abc' is not a number"),
        ("256.1.1.1:80", "'256.1.1.1' is not an IPv4 address"),
        ("1.2.3:80", "'1.2.3' is not an IPv4 address"),
        ("bad host:80", "'bad host' is not a host name"),
        ("-leading.dash:80", "is not a host name"),
        ("trailing-.dash:80", "is not a host name"),
        ("double..dot:80", "is not a host name"),
        ("a/b:80", "is not a host name"),
        ("unix:", "the unix socket path is empty"),
        ("unix:///", "the unix socket path is empty"),
    ],
)
def test_refused_addresses_name_the_address_and_the_reason(address: str, reason: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_address(address)
    message = str(raised.value)
    assert repr(address) in message, f"expected the error to name {address!r}, got {message!r}"
    assert reason in message, f"expected the reason {reason!r}, got {message!r}"
    assert "expected host:port, [::1]:port or unix:path" in message, (
        f"expected the accepted forms, got {message!r}"
    )


@pytest.mark.parametrize("address", ["", " ", "\t\n"])
def test_empty_address_says_it_is_empty(address: str) -> None:
    with pytest.raises(ValueError, match=r"^exchange address is empty"):
        RemoteExchange(address)


def test_a_very_long_host_is_refused() -> None:
    host = ".".join(["a" * 63] * 5)  # 319 characters: over the 253 a DNS name may have
    with pytest.raises(ValueError, match="is not a host name"):
        check_address(f"{host}:80")
