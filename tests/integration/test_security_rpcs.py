"""Every RPC a secure coordinator serves refuses callers without its permission.

One real coordinator (TLS, ``--auth tokens:``, ``--policy``) per module. The RPCs are not
listed here: they are discovered by gRPC server reflection, called as an admin, so a new
RPC is walked (and must be in ``RPC_PERMISSIONS``) without touching this file. Each is
called with no credential, with a bad token, and as a principal that lacks its permission.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from xpipe._proto import admin_pb2, admin_pb2_grpc, pipeline_pb2, pipeline_pb2_grpc
from xpipe.security._rbac import DEFAULT_POLICY, PUBLIC, RPC_PERMISSIONS
from xpipe.security._tokens import create_token

from tests.harness import Cluster, SecureSetup, eventually

CALL_TIMEOUT_S = 5.0
#: Principals of the tokens file, by role (``SecureSetup.DEFAULT_PRINCIPALS``).
PRINCIPALS = ("admin", "viewer", "submitter", "operator", "worker")


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rpcs")
    # TLS without client certificates: a call can then carry no identity at all.
    setup = SecureSetup(tmp, mtls=False, policy='[roles.lister]\npermissions = ["worker:read"]\n')
    with Cluster(tmp, workers=0, security=setup) as cluster:
        yield cluster, setup


def _discover(channel) -> dict[str, tuple[object, bool, bool]]:
    """Every method reflection shows: full name -> (request class, client streams, server streams)."""
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    methods = {}
    for service_name in db.get_services():
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            methods[f"/{service.full_name}/{method.name}"] = (
                request_class, method.client_streaming, method.server_streaming
            )
    return methods


def _call(channel, method: str, request_class, client_streams: bool, server_streams: bool) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` with an empty request; the status it ends with."""
    ser = request_class.SerializeToString
    request = request_class()
    try:
        if client_streams:
            responses = channel.stream_stream(method, request_serializer=ser)(iter([request]), timeout=CALL_TIMEOUT_S)
            for _ in responses:
                break
        elif server_streams:
            for _ in channel.unary_stream(method, request_serializer=ser)(request, timeout=CALL_TIMEOUT_S):
                break
        else:
            channel.unary_unary(method, request_serializer=ser)(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _lacking(permission: str) -> str:
    """A principal of the tokens file that does not hold ``permission``."""
    for name in PRINCIPALS:
        perms = DEFAULT_POLICY.roles[name]
        if name != "admin" and permission not in perms:
            return name
    raise AssertionError(f"every principal holds {permission}")


def test_every_rpc_found_by_reflection_refuses_callers_without_its_permission(secure):
    cluster, setup = secure
    with setup.channel(cluster.address, cert=None, token=setup.tokens["admin"]) as admin:
        methods = _discover(admin)
    assert len(methods) >= 20, sorted(methods)  # the five services, health and reflection
    unmapped = sorted(set(methods) - set(RPC_PERMISSIONS))
    assert not unmapped, f"RPCs reflection shows that RPC_PERMISSIONS does not map: {unmapped}"

    cases = 0
    failures = []
    anonymous = setup.channel(cluster.address, cert=None)
    bad = setup.channel(cluster.address, cert=None, token="xpt_" + "A" * 43)
    channels = {name: setup.channel(cluster.address, cert=None, token=setup.tokens[name]) for name in PRINCIPALS}
    try:
        for method, (request_class, client_streams, server_streams) in sorted(methods.items()):
            permission = RPC_PERMISSIONS[method]
            if permission == PUBLIC:
                code, details = _call(anonymous, method, request_class, client_streams, server_streams)
                cases += 1
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    failures.append(f"{method} (public) refused anonymously: {code.name} {details}")
                continue
            expected = {"no credential": (anonymous, grpc.StatusCode.UNAUTHENTICATED, ""),
                        "bad token": (bad, grpc.StatusCode.UNAUTHENTICATED, ""),
                        f"principal {_lacking(permission)!r}": (channels[_lacking(permission)],
                                                               grpc.StatusCode.PERMISSION_DENIED, permission)}  # fmt: skip
            for what, (channel, want, named) in expected.items():
                code, details = _call(channel, method, request_class, client_streams, server_streams)
                cases += 1
                if code != want or named not in details:
                    failures.append(f"{method} with {what}: got {code.name} {details!r}, want {want.name} naming {named!r}")
    finally:
        for channel in (anonymous, bad, *channels.values()):
            channel.close()
    print(f"\n(RPC x credential) cases tried: {cases} over {len(methods)} RPCs")
    assert not failures, "\n".join(failures)
    assert cases >= 3 * (len(methods) - 3)


def test_health_answers_without_any_credential(secure):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cluster, setup = secure
    with setup.channel(cluster.address, cert=None) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_policy_role_grants_its_permission_and_nothing_else(secure):
    """An extra principal with the policy's own role lists workers, and may not list runs."""
    cluster, setup = secure
    token = create_token(setup.tokens_file, principal="lister1", roles=["lister"])  # reloaded within a second
    with setup.channel(cluster.address, cert=None, token=token) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        eventually(lambda: admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=CALL_TIMEOUT_S) is not None,
                   timeout_s=10, message="the new token is accepted once the tokens file reloads")  # fmt: skip
        with pytest.raises(grpc.RpcError) as exc:
            pipeline_pb2_grpc.PipelineServiceStub(channel).ListRuns(pipeline_pb2.ListRunsRequest(), timeout=CALL_TIMEOUT_S)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "run:read" in exc.value.details()
