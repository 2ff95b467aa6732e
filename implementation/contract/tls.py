"""TLS settings: PEM files read once, with errors that name the file and the problem."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS file cannot be used; the message is one line naming the file."""


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of a PEM file; TlsConfigError when it cannot be read or holds no PEM block."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{what} {str(path)!r} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class TlsServerConfig:
    """Server certificate and key; with `client_ca_file`, clients must present a certificate it signed."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def check(self) -> None:
        """Read and parse every file now, so a bad file fails at start-up with a clear message
        (gRPC itself would only fail each handshake later)."""
        self.credentials()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(
                f"TLS certificate {str(self.cert_file)!r} and key {str(self.key_file)!r} are not a usable pair: "
                f"{getattr(exc, 'reason', None) or exc}"
            ) from None
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, ValueError) as exc:
                raise TlsConfigError(
                    f"TLS client CA {str(self.client_ca_file)!r} holds no usable certificate: "
                    f"{getattr(exc, 'reason', None) or exc}"
                ) from None

    def credentials(self) -> grpc.ServerCredentials:
        key = read_pem(self.key_file, "TLS key")
        cert = read_pem(self.cert_file, "TLS certificate")
        client_ca = read_pem(self.client_ca_file, "TLS client CA") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


def channel_credentials(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust `ca_file` (None: the system roots); present cert/key for mutual TLS."""
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError("a client certificate needs both its certificate and its key file")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_file, "TLS CA") if ca_file else None,
        private_key=read_pem(key_file, "TLS client key") if key_file else None,
        certificate_chain=read_pem(cert_file, "TLS client certificate") if cert_file else None,
    )


__all__ = ["TlsConfigError", "TlsServerConfig", "channel_credentials", "read_pem"]
