"""live_server's Host allow-list and Origin check (the library)."""

from __future__ import annotations

import pytest

from implementation.live_server.access import AccessPolicy, host_name, origin_key

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8080", "127.0.0.1"), ("[::1]:80", "::1"), ("LocalHost.", "localhost"), ("::1", "::1")],
)
def test_host_name_drops_port_brackets_and_case(header: str, name: str) -> None:
    assert host_name(header) == name


def test_origin_key_keeps_scheme_host_and_port() -> None:
    assert origin_key("HTTP://Dash.Example:8080") == "http://dash.example:8080"
    assert origin_key("null") is None and origin_key("file:///x") is None


def test_default_hosts_are_loopback_and_the_listen_host() -> None:
    policy = AccessPolicy("192.0.2.7")
    for host in ("localhost:1", "127.0.0.1", "[::1]:2", "192.0.2.7:8080", None):
        assert policy.allows_host(host), f"expected {host!r} allowed"
    assert not policy.allows_host("evil.example:8080")
    assert not AccessPolicy("0.0.0.0").allows_host("0.0.0.0"), "a wildcard listen host names no host"


def test_default_origins_are_those_on_allowed_hosts() -> None:
    policy = AccessPolicy("127.0.0.1")
    assert policy.allows_origin("http://127.0.0.1:8080") and policy.allows_origin(None)
    assert not policy.allows_origin("http://evil.example") and not policy.allows_origin("null")


def test_listed_origins_and_wildcards() -> None:
    listed = AccessPolicy("127.0.0.1", allowed_origins=["https://dash.example"])
    assert listed.allows_origin("https://dash.example") and not listed.allows_origin("http://127.0.0.1:1")
    assert AccessPolicy("127.0.0.1", allowed_hosts=["*"]).allows_host("anything.example")
    assert AccessPolicy("127.0.0.1", allowed_origins=["*"]).allows_origin("http://evil.example")
