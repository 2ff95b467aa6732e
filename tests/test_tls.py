"""TLS material: the files, the names the server certificate covers, and real handshakes over gRPC
(trusted CA, wrong CA, mutual TLS)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from harness.tls import TlsMaterial

pytestmark = pytest.mark.timeout(20)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_files_are_pem_and_the_server_certificate_covers_every_loopback_name(
    tls_material: TlsMaterial,
) -> None:
    for path in (
        tls_material.ca_pem,
        tls_material.cert_pem,
        tls_material.client_cert_pem,
        tls_material.wrong_ca_pem,
    ):
        assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----"), (
            f"expected a PEM certificate in {path}"
        )
    for path in (tls_material.key_pem, tls_material.client_key_pem, tls_material.wrong_key_pem):
        assert b"PRIVATE KEY-----" in path.read_bytes(), f"expected a PEM private key in {path}"
    server = x509.load_pem_x509_certificate(tls_material.cert_pem.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "::1"}, f"expected 127.0.0.1 and ::1, got {ips}"
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate(tls_material.ca_pem.read_bytes())
    wrong = x509.load_pem_x509_certificate(tls_material.wrong_ca_pem.read_bytes())
    client = x509.load_pem_x509_certificate(tls_material.client_cert_pem.read_bytes())
    assert server.issuer == ca.subject and client.issuer == ca.subject
    assert wrong.subject != ca.subject, "expected the wrong CA to be unrelated"
    assert tls_material.launch_values() == {
        "tls_cert": str(tls_material.cert_pem),
        "tls_key": str(tls_material.key_pem),
        "tls_ca": str(tls_material.ca_pem),
    }


def test_each_test_gets_its_own_material(tls_material: TlsMaterial, tmp_path: Path) -> None:
    assert tls_material.folder.parent == tmp_path, (
        f"expected the files under {tmp_path}, got {tls_material.folder}"
    )


async def _serve(
    tls_material: TlsMaterial, *, mutual: bool, host: str = "127.0.0.1"
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port(f"{host}:0", tls_material.server_credentials(require_client_auth=mutual))
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def _check(target: str, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest_asyncio.fixture
async def tls_server(tls_material: TlsMaterial) -> AsyncIterator[int]:
    server, port = await _serve(tls_material, mutual=False)
    yield port
    await server.stop(None)


@pytest.mark.asyncio
async def test_a_client_trusting_the_ca_connects_by_ip_and_by_name(
    tls_material: TlsMaterial, tls_server: int
) -> None:
    for target in (f"127.0.0.1:{tls_server}", f"localhost:{tls_server}"):
        code = await _check(target, tls_material.channel_credentials())
        assert code is grpc.StatusCode.OK, f"expected a TLS health check on {target} to pass, got {code}"


@pytest.mark.asyncio
async def test_a_client_trusting_the_wrong_ca_is_refused(tls_material: TlsMaterial, tls_server: int) -> None:
    code = await _check(f"127.0.0.1:{tls_server}", tls_material.channel_credentials(wrong_ca=True))
    assert code is grpc.StatusCode.UNAVAILABLE, f"expected UNAVAILABLE (handshake failure), got {code}"


@pytest.mark.asyncio
async def test_mutual_tls_needs_the_client_certificate(tls_material: TlsMaterial) -> None:
    server, port = await _serve(tls_material, mutual=True)
    try:
        without = await _check(f"127.0.0.1:{port}", tls_material.channel_credentials())
        with_cert = await _check(f"127.0.0.1:{port}", tls_material.channel_credentials(client_cert=True))
    finally:
        await server.stop(None)
    assert without is grpc.StatusCode.UNAVAILABLE, f"expected no client certificate refused, got {without}"
    assert with_cert is grpc.StatusCode.OK, f"expected the client certificate accepted, got {with_cert}"


@pytest.mark.asyncio
async def test_ipv6_loopback_is_covered(tls_material: TlsMaterial) -> None:
    if not _ipv6_loopback():
        pytest.skip("environment: no IPv6 loopback on this machine")
    server, port = await _serve(tls_material, mutual=False, host="[::1]")
    try:
        code = await _check(f"[::1]:{port}", tls_material.channel_credentials())
    finally:
        await server.stop(None)
    assert code is grpc.StatusCode.OK, f"expected a TLS health check on [::1] to pass, got {code}"
