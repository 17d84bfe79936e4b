"""Roles, the policy file, authorize(), and THE RPC -> permission table against the protos."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
import xpipe._proto
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from xpipe.security._errors import SecurityConfigError
from xpipe.security._principal import Principal
from xpipe.security._rbac import (
    BUILTIN_ROLES,
    DEFAULT_POLICY,
    PERMISSIONS,
    PUBLIC,
    RPC_PERMISSIONS,
    Policy,
    authorize,
    permission_for_rpc,
)


def _proto_methods() -> set[str]:
    """Every RPC of every service in xpipe's generated descriptors, plus health and reflection."""
    methods: set[str] = set()
    modules = [importlib.import_module(f"xpipe._proto.{m.name}") for m in pkgutil.iter_modules(xpipe._proto.__path__)
               if m.name.endswith("_pb2")]  # fmt: skip
    modules += [health_pb2, reflection_pb2]
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.add(f"/{service.full_name}/{method.name}")
    return methods


def test_every_rpc_in_the_protos_is_mapped_to_a_known_permission():
    methods = _proto_methods()
    assert "/xpipe.v1.PipelineService/SubmitPipeline" in methods  # the walk found the services
    assert "/xpipe.v1.WorkerService/Connect" in methods
    assert "/grpc.health.v1.Health/Check" in methods
    unmapped = sorted(m for m in methods if m not in RPC_PERMISSIONS)
    assert not unmapped, f"RPCs without a permission in RPC_PERMISSIONS: {unmapped}"
    unknown = {m: p for m, p in RPC_PERMISSIONS.items() if p != PUBLIC and p not in PERMISSIONS}
    assert not unknown, f"RPCs mapped to permissions that do not exist: {unknown}"


def test_only_health_checks_are_public_and_unmapped_methods_are_closed():
    assert sorted(m for m, p in RPC_PERMISSIONS.items() if p == PUBLIC) == [
        "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List", "/grpc.health.v1.Health/Watch"]  # fmt: skip
    assert permission_for_rpc("/xpipe.v1.PipelineService/NoSuchRpc") is None
    assert permission_for_rpc("/xpipe.v1.PipelineService/GetTaskLogs") == "logs:read"


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        ("viewer", "/xpipe.v1.PipelineService/GetRun", True),
        ("viewer", "/xpipe.v1.PipelineService/SubmitPipeline", False),
        ("viewer", "/xpipe.v1.PipelineService/GetTaskResult", False),
        ("submitter", "/xpipe.v1.PipelineService/SubmitPipeline", True),
        ("submitter", "/xpipe.v1.AdminService/DrainWorker", False),
        ("submitter", "/xpipe.v1.WorkerService/Connect", False),
        ("operator", "/xpipe.v1.AdminService/DrainWorker", True),
        ("operator", "/xpipe.v1.AdminService/InstallDependencies", True),
        ("worker", "/xpipe.v1.WorkerService/Connect", True),
        ("worker", "/xpipe.v1.PipelineService/ListRuns", False),
        ("admin", "/xpipe.v1.AdminService/ForgetWorkers", True),
    ],
)
def test_builtin_roles_against_rpcs(role, method, allowed):
    refusal = authorize(Principal.build("p", roles=[role]), RPC_PERMISSIONS[method], "default")
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal.code == "PERMISSION_DENIED"
        assert RPC_PERMISSIONS[method] in refusal.message


def test_code_pickle_is_admin_only_by_default_and_admin_holds_custom_permissions():
    holders = sorted(r for r, perms in BUILTIN_ROLES.items() if "code:pickle" in perms)
    assert holders == ["admin"]
    admin = Principal.build("root", roles=["admin"])
    assert authorize(admin, "customer_data_read", "default") is None


def test_no_principal_is_unauthenticated_and_public_needs_none():
    refusal = authorize(None, "run:read", "default")
    assert refusal.code == "UNAUTHENTICATED" and "run:read" in refusal.message
    assert authorize(None, PUBLIC) is None


def test_namespaces_restrict_namespaced_checks_only():
    p = Principal.build("dana", roles=["submitter"], namespaces=["team-a"])
    assert authorize(p, "run:submit", "team-a") is None
    refusal = authorize(p, "run:submit", "team-b")
    assert (
        refusal.code == "PERMISSION_DENIED" and "'team-b'" in refusal.message and "team-a" in refusal.message
    )
    assert authorize(p, "cluster:read", None) is None
    assert authorize(Principal.build("x", roles=["viewer"], namespaces=[]), "run:read", "default") is not None


def _policy(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return Policy.load(path)


def test_policy_file_from_the_issue(tmp_path):
    policy = _policy(
        tmp_path,
        """
[roles.analyst]
permissions = ["run:read", "customer_data_read"]
[principals.dana]
roles = ["submitter"]
permissions = ["customer_data_read"]
namespaces = ["default"]
""",
    )
    dana = Principal.build("dana")  # the credential itself grants nothing
    assert authorize(dana, "run:submit", "default", policy) is None
    assert authorize(dana, "customer_data_read", "default", policy) is None
    assert authorize(dana, "run:submit", "other", policy).code == "PERMISSION_DENIED"
    analyst = Principal.build("eve", roles=["analyst"])
    assert authorize(analyst, "customer_data_read", "x", policy) is None
    assert authorize(analyst, "customer_data_read", "x") is not None  # unknown role under the default policy
    assert "customer_data_read" in authorize(Principal.build("bob", roles=["viewer"]), "customer_data_read",
                                             "default", policy).message  # fmt: skip


def test_policy_overrides_a_builtin_role_but_not_admin(tmp_path):
    policy = _policy(tmp_path, '[roles.viewer]\npermissions = ["run:read"]\n')
    assert authorize(Principal.build("v", roles=["viewer"]), "worker:read", None, policy) is not None
    assert authorize(Principal.build("v", roles=["viewer"]), "worker:read", None, DEFAULT_POLICY) is None
    with pytest.raises(SecurityConfigError, match=r"\[roles.admin\].*cannot be redefined"):
        _policy(tmp_path, "[roles.admin]\npermissions = []\n")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[roles.a]\npermissions = ["run:read"]\ncolour = "red"\n', r"\[roles.a\]: unknown key\(s\) colour"),
        ('[principals.d]\nrole = ["viewer"]\n', r"\[principals.d\]: unknown key\(s\) role"),
        ('[principals.d]\nroles = ["superuser"]\n', r"undefined role\(s\) superuser"),
        ("[groups.x]\n", r"unknown key\(s\) groups"),
        ("[roles.a]\n", r"\[roles.a\]: missing key permissions"),
        ('[roles.a]\npermissions = "run:read"\n', r"permissions must be a list"),
        ('[roles.a]\npermissions = ["has space"]\n', r"invalid permission 'has space'"),
        ("[roles\n", r"not valid TOML"),
    ],
)
def test_bad_policy_files_are_refused_naming_the_problem(tmp_path, text, match):
    with pytest.raises(SecurityConfigError, match=match):
        _policy(tmp_path, text)


def test_missing_policy_file_is_named(tmp_path):
    with pytest.raises(SecurityConfigError, match=r"policy file .*nope.toml: cannot read"):
        Policy.load(tmp_path / "nope.toml")


def test_effective_permissions_are_cached_per_principal():
    p = Principal.build("c", roles=["operator"])
    DEFAULT_POLICY.effective.cache_clear()
    authorize(p, "run:read", "default")
    authorize(p, "worker:drain", None)
    info = DEFAULT_POLICY.effective.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_docs_security_md_lists_every_rpc_with_its_permission():
    """The RPC table in docs/security.md is the code's table; a new RPC changes both."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for method, permission in RPC_PERMISSIONS.items():
        cell = f"`{permission}`" if permission else "none (public)"
        assert f"| `{method}` | {cell} |" in docs, f"docs/security.md lacks the row for {method}"
    for permission in PERMISSIONS:
        assert f"| `{permission}` |" in docs, f"docs/security.md lacks permission {permission}"
