"""§4.2 extension: gRPC server reflection, open without a token (4.2.1.x37, rule C65 of
docs/sut-manifest.md, capability `reflection`).

The client is grpcio-reflection's ProtoReflectionDescriptorDatabase. The package ships only the
v1alpha messages; v1's are the same messages under another package name, so v1 is asked with them
through a channel that sends the library's calls to the service being asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from harness.sut.connector import ConnectorFactory
from harness.sut.manifest import Manifest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.timeout(30),
    pytest.mark.requires("reflection"),
]

TOKEN = "conformance-token-reflection"
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"  # asked only when v1 is UNIMPLEMENTED
EXCHANGE_SERVICE = "opensqt.exchange.v1.ExchangeService"
HEALTH_SERVICE = "grpc.health.v1.Health"
RPCS = ("GetAccount", "GetPositions", "SubscribeAccount", "SubscribePositions")
CALL_TIMEOUT_S = 5.0


class ReflectionChannel:
    """What grpcio-reflection's client is given as its channel: each call goes to `service` (the
    library names v1alpha) and carries a deadline (the library sets none)."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        self._channel = channel
        self._service = service

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **_: Any,  # _registered_method: an optimisation for the library's own path
    ) -> Callable[..., Iterator[Any]]:
        name = method.rsplit("/", 1)[-1]
        call = self._channel.stream_stream(
            f"/{self._service}/{name}", request_serializer, response_deserializer
        )
        return lambda requests, **options: call(requests, timeout=CALL_TIMEOUT_S, **options)


def status(error: grpc.RpcError) -> str:
    return f"{error.code().name} {error.details()!r}"


def database(channel: grpc.Channel, service: str) -> Any:
    return ProtoReflectionDescriptorDatabase(ReflectionChannel(channel, service))


def list_services(channel: grpc.Channel) -> tuple[str, list[str]]:
    """The reflection service that answers and the services it lists: v1, or v1alpha when the
    server does not implement v1."""
    try:
        return V1, list(database(channel, V1).get_services())
    except grpc.RpcError as error:
        v1_failed = status(error)
        unimplemented = error.code() is grpc.StatusCode.UNIMPLEMENTED
    if not unimplemented:
        pytest.fail(f"expected {V1} to list the services without a token, got {v1_failed}")
    try:
        return V1ALPHA, list(database(channel, V1ALPHA).get_services())
    except grpc.RpcError as error:
        v1alpha_failed = status(error)
    pytest.fail(
        f"expected gRPC server reflection ({V1}, or {V1ALPHA}) to list the services without a "
        f"token, got {v1_failed} from {V1} and {v1alpha_failed} from {V1ALPHA}"
    )


def file_containing(channel: grpc.Channel, service: str, symbol: str) -> FileDescriptorProto:
    """The file descriptor the server answers for `symbol` (a file_containing_symbol request)."""
    try:
        found: FileDescriptorProto = database(channel, service).FindFileContainingSymbol(symbol)
        return found
    except KeyError:
        got = "NOT_FOUND"
    except AssertionError as error:  # the library's check: an error response other than NOT_FOUND
        got = str(error)
    except grpc.RpcError as error:
        got = status(error)
    pytest.fail(f"expected {service} to answer the file containing {symbol}, got {got}")


def reflect(address: str) -> tuple[str, list[str], FileDescriptorProto]:
    """Which reflection service answered, what it lists and the file of ExchangeService; asked
    without a token, on a channel of its own (the library's client is synchronous)."""
    with grpc.insecure_channel(address) as channel:
        service, listed = list_services(channel)
        return service, listed, file_containing(channel, service, EXCHANGE_SERVICE)


def rpc_problem(found: FileDescriptorProto) -> str | None:
    """None when the file describes ExchangeService with the four RPCs; otherwise what it shows."""
    package, _, name = EXCHANGE_SERVICE.rpartition(".")
    described = [s for s in found.service if found.package == package and s.name == name]
    if not described:
        services = [f"{found.package}.{s.name}" for s in found.service]
        return f"expected the file containing {EXCHANGE_SERVICE} to describe it, got file {found.name!r} with services {services}"
    methods = [m.name for m in described[0].method]
    missing = [rpc for rpc in RPCS if rpc not in methods]
    if missing:
        return f"expected {EXCHANGE_SERVICE}'s descriptor to name the RPCs {list(RPCS)}, got {methods} (missing {missing})"
    return None


@pytest.mark.scenario("4.2.1.x37")
async def test_reflection_describes_the_services_without_a_token(
    connectors: ConnectorFactory, sut: Manifest
) -> None:
    """Rule C65: with token auth on where the SUT claims it, reflection answers a client that sends
    no token: its list names ExchangeService and Health, and the file containing ExchangeService
    names the four RPCs. All problems are reported together."""
    token = TOKEN if sut.has_capability("token_auth") else None
    connector = await connectors.start(token=token, subscriptions=())
    service, listed, found = await asyncio.to_thread(reflect, connector.address)
    asked = f"asked {service} without a token" + (" (token auth on)" if token else "")
    problems = []
    missing = [name for name in (EXCHANGE_SERVICE, HEALTH_SERVICE) if name not in listed]
    if missing:
        problems.append(
            f"expected list_services to name {EXCHANGE_SERVICE} and {HEALTH_SERVICE}, got {sorted(listed)} (missing {missing})"
        )
    if (problem := rpc_problem(found)) is not None:
        problems.append(problem)
    assert not problems, f"{asked}: " + "; ".join(problems)
