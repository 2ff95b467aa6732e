"""`exchange_connector health`: one grpc.health.v1 Check; exit 0 only when it answers SERVING."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from implementation.connector.cli import PROGRAM, HealthSettings
from implementation.contract.tls import channel_credentials


def check_health(settings: HealthSettings) -> int:
    """0 when the server reports SERVING; 1 (with the reason on stderr) otherwise."""
    secure = settings.tls_ca is not None or settings.tls_cert is not None
    if secure:
        credentials = channel_credentials(settings.tls_ca, settings.tls_cert, settings.tls_key)
        channel = grpc.secure_channel(settings.address, credentials)
    else:
        channel = grpc.insecure_channel(settings.address)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=settings.service), timeout=settings.timeout
        )
    except grpc.RpcError as error:
        code = error.code().name if isinstance(error, grpc.Call) else "ERROR"
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        print(f"{PROGRAM} health: {settings.address}: {code}: {details}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{settings.address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
