"""TLS material for tests, made fresh by trustme and written to a folder as PEM files.

One CA signs a server certificate valid for every loopback name a test uses (127.0.0.1, ::1,
localhost) and a client certificate for mutual TLS. A second, unrelated CA (with a server
certificate of its own) is there for "wrong CA" tests. Files are on disk because the programs
under test take paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme

SERVER_NAMES = ("127.0.0.1", "::1", "localhost")
CLIENT_NAME = "client.localhost"


@dataclass(frozen=True)
class TlsMaterial:
    folder: Path
    ca_pem: Path  # the CA clients trust
    cert_pem: Path  # server certificate (chain) for SERVER_NAMES, signed by ca_pem
    key_pem: Path  # its private key
    client_cert_pem: Path  # client certificate for mTLS, signed by ca_pem
    client_key_pem: Path
    wrong_ca_pem: Path  # an unrelated CA: trusting it must not let a client accept cert_pem
    wrong_cert_pem: Path  # server certificate for SERVER_NAMES signed by wrong_ca_pem
    wrong_key_pem: Path

    def launch_values(self) -> dict[str, str]:
        """The manifest placeholders {tls_cert}, {tls_key}, {tls_ca} of a program started with tls=True."""
        return {"tls_cert": str(self.cert_pem), "tls_key": str(self.key_pem), "tls_ca": str(self.ca_pem)}

    def server_credentials(self, *, require_client_auth: bool = False) -> grpc.ServerCredentials:
        """Server side: cert_pem/key_pem; with require_client_auth, clients must present a cert of ca_pem."""
        return grpc.ssl_server_credentials(
            [(self.key_pem.read_bytes(), self.cert_pem.read_bytes())],
            root_certificates=self.ca_pem.read_bytes() if require_client_auth else None,
            require_client_auth=require_client_auth,
        )

    def channel_credentials(
        self, *, client_cert: bool = False, wrong_ca: bool = False
    ) -> grpc.ChannelCredentials:
        """Client side: trust ca_pem (or wrong_ca_pem); with client_cert, present the client certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=(self.wrong_ca_pem if wrong_ca else self.ca_pem).read_bytes(),
            private_key=self.client_key_pem.read_bytes() if client_cert else None,
            certificate_chain=self.client_cert_pem.read_bytes() if client_cert else None,
        )


def make_tls_material(folder: Path) -> TlsMaterial:
    """Create a CA, server and client certificates, and an unrelated CA, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="exchange conformance test CA")
    server = ca.issue_cert(*SERVER_NAMES)
    client = ca.issue_cert(CLIENT_NAME)
    wrong_ca = trustme.CA(organization_name="unrelated test CA")
    wrong_server = wrong_ca.issue_cert(*SERVER_NAMES)

    def write(name: str, *blobs: trustme.Blob) -> Path:
        path = folder / name
        path.write_bytes(b"".join(blob.bytes() for blob in blobs))
        return path

    return TlsMaterial(
        folder=folder,
        ca_pem=write("ca.pem", ca.cert_pem),
        cert_pem=write("server.pem", *server.cert_chain_pems),
        key_pem=write("server.key", server.private_key_pem),
        client_cert_pem=write("client.pem", *client.cert_chain_pems),
        client_key_pem=write("client.key", client.private_key_pem),
        wrong_ca_pem=write("wrong-ca.pem", wrong_ca.cert_pem),
        wrong_cert_pem=write("wrong-server.pem", *wrong_server.cert_chain_pems),
        wrong_key_pem=write("wrong-server.key", wrong_server.private_key_pem),
    )
