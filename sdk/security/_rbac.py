"""Roles, permissions, the policy file, and THE table of which permission each RPC needs.

Authorization is a pure function of (principal, permission, namespace, policy), so the
coordinator's interceptor (next round) is a thin shell around :func:`authorize` and the same
answer can be tested without a server. Effective permissions are computed once per
principal and cached, so checking an RPC costs a dict lookup and a set membership test.

Example::

    policy = Policy.load("policy.toml")          # or DEFAULT_POLICY
    refusal = authorize(principal, RPC_PERMISSIONS[method], "default", policy)
    if refusal:
        await context.abort(grpc.StatusCode[refusal.code], refusal.message)
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ._errors import SecurityConfigError
from ._principal import ALL_NAMESPACES, Principal, check_name

__all__ = [
    "BUILTIN_ROLES",
    "DEFAULT_POLICY",
    "PERMISSIONS",
    "PUBLIC",
    "NAMESPACED_RPCS",
    "ROLES",
    "RPC_AUDIT",
    "RPC_PERMISSIONS",
    "Policy",
    "Refusal",
    "authorize",
    "permission_for_rpc",
]

#: Every built-in permission and what it allows. Policies may add their own names
#: (``customer_data_read``) for ``@require_permission`` on tasks.
PERMISSIONS: Mapping[str, str] = MappingProxyType({
    "run:read": "see runs, their tasks and events (GetRun, ListRuns, WatchRun, GetTaskStats)",
    "run:submit": "submit pipelines (importable functions and handlers)",
    "run:cancel": "cancel runs",
    "result:read": "read task results (a data read, audited)",
    "logs:read": "read task logs (a data read, audited)",
    "story:read": "read the story of a run's moves",
    "cluster:read": "see cluster status and leader",
    "worker:read": "list workers",
    "worker:drain": "drain a worker",
    "worker:forget": "forget lost workers",
    "worker:install": "pip-install packages on workers",
    "worker:connect": "connect as a worker and run tasks",
    "code:pickle": "submit cloudpickled code, which workers run as given",
    "code:command": "submit command tasks (argv run on workers)",
    "audit:read": "read the audit log",
    "lineage:read": "read a run's lineage (content hashes and refs, not data)",
    "data:gc": "delete data past retention (xpipe gc)",
    "data:forget": "erase what is stored about a data subject (pm.forget_subject)",
    "api:describe": "use gRPC server reflection",
    "stream:read": "see stream pipelines' status (GetStreams, xpipe streams)",
    "stream:control": "stop and restart stream pipelines",
    "stream:io": "read and write memory:// streams on the coordinator's memory broker",
    "stream:run": "run stream stage instances: report, checkpoint (workers hold it)",
    "alert:read": "see the alerts the coordinator raised and their deliveries (xpipe alerts)",
    "run:debug": "release the held tasks of a debug session's run (DebugService.ReleaseTasks)",
    "cluster:scale": "change the autoscaler's desired worker count and add workers (AutoscaleService)",
})  # fmt: skip

_VIEW = (
    "run:read", "story:read", "cluster:read", "worker:read", "lineage:read", "api:describe", "stream:read", "alert:read",
)  # fmt: skip
_SUBMIT = (*_VIEW, "run:submit", "run:cancel", "result:read", "logs:read", "code:command", "stream:control", "stream:io",
           "run:debug")  # fmt: skip
_OPERATE = (*_SUBMIT, "cluster:scale", "worker:drain", "worker:forget", "worker:install", "audit:read", "data:gc")

#: Built-in roles. ``admin`` holds every permission, custom ones included. Workers hold only
#: ``worker:connect`` and what the stream instances they run need. Nobody but ``admin`` holds
#: ``code:pickle`` unless a policy grants it.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = MappingProxyType({
    "viewer": frozenset(_VIEW),
    "submitter": frozenset(_SUBMIT),
    "operator": frozenset(_OPERATE),
    "admin": frozenset(PERMISSIONS),
    # Stream instances run in workers' task processes with the worker's credential.
    "worker": frozenset({"worker:connect", "stream:run", "stream:io"}),
})  # fmt: skip
ROLES: tuple[str, ...] = tuple(BUILTIN_ROLES)

#: The value in :data:`RPC_PERMISSIONS` of RPCs anyone may call, unauthenticated (health
#: checks must answer load balancers and orchestrators that hold no credential).
PUBLIC = ""

#: THE table: every RPC's full method name -> the permission it needs. The interceptor refuses
#: a method missing here (fail closed), and a test walks the protos so none is forgotten.
#: Namespaced permissions (runs, results, logs) are checked against the run's namespace.
RPC_PERMISSIONS: Mapping[str, str] = MappingProxyType({
    "/xpipe.v1.PipelineService/SubmitPipeline": "run:submit",
    "/xpipe.v1.PipelineService/GetRun": "run:read",
    "/xpipe.v1.PipelineService/ListRuns": "run:read",
    "/xpipe.v1.PipelineService/CancelRun": "run:cancel",
    "/xpipe.v1.PipelineService/WatchRun": "run:read",
    "/xpipe.v1.PipelineService/GetTaskResult": "result:read",
    "/xpipe.v1.PipelineService/GetTaskStats": "run:read",
    "/xpipe.v1.PipelineService/GetTaskLogs": "logs:read",
    "/xpipe.v1.PipelineService/GetArtifact": "result:read",
    "/xpipe.v1.WorkerService/Connect": "worker:connect",
    "/xpipe.v1.AdminService/GetClusterStatus": "cluster:read",
    "/xpipe.v1.AdminService/ListWorkers": "worker:read",
    "/xpipe.v1.AdminService/DrainWorker": "worker:drain",
    "/xpipe.v1.AdminService/ForgetWorkers": "worker:forget",
    "/xpipe.v1.AdminService/GetStory": "story:read",
    "/xpipe.v1.AdminService/InstallDependencies": "worker:install",
    "/xpipe.v1.AuditService/GetAudit": "audit:read",
    "/xpipe.v1.AuditService/GetLineage": "lineage:read",
    "/xpipe.v1.GovernanceService/CollectGarbage": "data:gc",
    "/xpipe.v1.GovernanceService/ForgetSubject": "data:forget",
    "/xpipe.v1.StreamService/Produce": "stream:io",
    "/xpipe.v1.StreamService/Fetch": "stream:io",
    "/xpipe.v1.StreamService/Commit": "stream:io",
    "/xpipe.v1.StreamService/DescribeStream": "stream:io",
    "/xpipe.v1.StreamService/ReportInstance": "stream:run",
    "/xpipe.v1.StreamService/SaveCheckpoint": "stream:run",
    "/xpipe.v1.StreamService/LoadCheckpoint": "stream:run",
    "/xpipe.v1.StreamService/GetStreams": "stream:read",
    "/xpipe.v1.StreamService/StopStream": "stream:control",
    "/xpipe.v1.StreamService/RestartStreams": "stream:control",
    "/xpipe.v1.InsightsService/GetHistory": "run:read",
    "/xpipe.v1.InsightsService/ListAlerts": "alert:read",
    "/xpipe.v1.DebugService/ReleaseTasks": "run:debug",
    "/xpipe.v1.AutoscaleService/GetUsage": "cluster:read",
    "/xpipe.v1.AutoscaleService/ScaleWorkers": "cluster:scale",
    "/xpipe.v1.AutoscaleService/AddWorker": "cluster:scale",
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.health.v1.Health/List": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "api:describe",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "api:describe",
})  # fmt: skip


#: RPCs whose request names a run (``request.run_id``; WatchRun may instead carry a
#: ``submit``, whose pipeline's namespace counts): their permission is checked in the
#: run's namespace.
NAMESPACED_RPCS: frozenset[str] = frozenset({
    "/xpipe.v1.PipelineService/SubmitPipeline",
    "/xpipe.v1.PipelineService/GetRun",
    "/xpipe.v1.PipelineService/CancelRun",
    "/xpipe.v1.PipelineService/WatchRun",
    "/xpipe.v1.PipelineService/GetTaskResult",
    "/xpipe.v1.PipelineService/GetTaskLogs",
    "/xpipe.v1.PipelineService/GetArtifact",
    "/xpipe.v1.AuditService/GetLineage",
    "/xpipe.v1.DebugService/ReleaseTasks",
})  # fmt: skip

#: What the audit log records of each call besides refusals (which it records for every
#: RPC but the public ones): ``mutation`` (changes state) or ``data-read`` (reads task
#: data). RPCs not listed are reads of metadata and are not audited when allowed.
RPC_AUDIT: Mapping[str, str] = MappingProxyType({
    "/xpipe.v1.PipelineService/SubmitPipeline": "mutation",
    "/xpipe.v1.PipelineService/CancelRun": "mutation",
    "/xpipe.v1.PipelineService/GetTaskResult": "data-read",
    "/xpipe.v1.PipelineService/GetTaskLogs": "data-read",
    "/xpipe.v1.PipelineService/GetArtifact": "data-read",
    "/xpipe.v1.WorkerService/Connect": "mutation",
    "/xpipe.v1.AdminService/DrainWorker": "mutation",
    "/xpipe.v1.AdminService/ForgetWorkers": "mutation",
    "/xpipe.v1.AdminService/InstallDependencies": "mutation",
    "/xpipe.v1.GovernanceService/CollectGarbage": "mutation",
    "/xpipe.v1.GovernanceService/ForgetSubject": "mutation",
    "/xpipe.v1.StreamService/StopStream": "mutation",
    "/xpipe.v1.StreamService/RestartStreams": "mutation",
    "/xpipe.v1.DebugService/ReleaseTasks": "mutation",
    "/xpipe.v1.AutoscaleService/ScaleWorkers": "mutation",
    "/xpipe.v1.AutoscaleService/AddWorker": "mutation",
})  # fmt: skip


def permission_for_rpc(method: str) -> str | None:
    """The permission ``method`` needs, :data:`PUBLIC` (``""``) if none, or None if unmapped.

    An unmapped method must be refused by the caller: a new RPC is closed until it is mapped.
    """
    return RPC_PERMISSIONS.get(method)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused.

    Attributes:
        code: The gRPC status code name: ``UNAUTHENTICATED`` (no or bad credential) or
            ``PERMISSION_DENIED`` (known caller, missing permission or namespace).
        message: One line naming the principal and what it lacks.
    """

    code: str
    message: str


_POLICY_KEYS = {"roles", "principals"}
_ROLE_KEYS = {"permissions"}
_PRINCIPAL_KEYS = {"roles", "permissions", "namespaces"}


def _strings(where: str, key: str, value: object, kind: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise SecurityConfigError(f"{where}: {key} must be a list of strings, got {type(value).__name__}")
    try:
        return tuple(check_name(kind, v) for v in value)
    except ValueError as exc:
        raise SecurityConfigError(f"{where}: {key}: {exc}") from None


def _unknown_keys(where: str, table: object, allowed: set[str]) -> Mapping[str, object]:
    if not isinstance(table, dict):
        raise SecurityConfigError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SecurityConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return table


@dataclass(frozen=True, slots=True)
class _PrincipalRule:
    roles: frozenset[str]
    permissions: frozenset[str]
    namespaces: frozenset[str] | None  # None: the policy does not restrict namespaces


class Policy:
    """Role definitions plus per-principal grants; the built-in roles when no file is given.

    A policy's ``[roles.X]`` adds role X or replaces a built-in role's permissions (except
    ``admin``, which always holds everything). ``[principals.Y]`` adds roles and permissions
    to principal Y whatever its credential says, and ``namespaces`` there restricts Y to
    those namespaces (intersected with what the credential allows).
    """

    def __init__(
        self,
        roles: Mapping[str, Iterable[str]] | None = None,
        principals: Mapping[str, _PrincipalRule] | None = None,
        *,
        source: str = "built-in",
    ) -> None:
        merged = dict(BUILTIN_ROLES)
        for name, perms in (roles or {}).items():
            merged[name] = frozenset(perms)
        self.roles: Mapping[str, frozenset[str]] = MappingProxyType(merged)
        self._principals: Mapping[str, _PrincipalRule] = MappingProxyType(dict(principals or {}))
        self.source = source
        # Per-policy cache: a policy reload builds a new Policy, so no stale grants survive it.
        self.effective = functools.lru_cache(maxsize=4096)(self._effective)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a TOML policy file.

        Raises:
            SecurityConfigError: unreadable, not TOML, an unknown key, a malformed name, a
                principal naming an undefined role, or an attempt to redefine ``admin``;
                the message names the file and the offending key.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SecurityConfigError(f"policy file {path}: cannot read: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(f"policy file {path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, source: str = "policy") -> Policy:
        """Validate a parsed policy (see :meth:`load`)."""
        _unknown_keys(source, data, _POLICY_KEYS)
        roles: dict[str, frozenset[str]] = {}
        role_tables = data.get("roles", {})
        if not isinstance(role_tables, dict):
            raise SecurityConfigError(f"{source}: [roles] must be a table")
        for name, table in role_tables.items():
            where = f"{source}: [roles.{name}]"
            try:
                check_name("role", name)
            except ValueError as exc:
                raise SecurityConfigError(f"{where}: {exc}") from None
            if name == "admin":
                raise SecurityConfigError(
                    f"{where}: the admin role always holds every permission and cannot be redefined"
                )
            _unknown_keys(where, table, _ROLE_KEYS)
            if "permissions" not in table:
                raise SecurityConfigError(f"{where}: missing key permissions")
            roles[name] = frozenset(_strings(where, "permissions", table["permissions"], "permission"))
        known_roles = set(BUILTIN_ROLES) | set(roles)
        principals: dict[str, _PrincipalRule] = {}
        principal_tables = data.get("principals", {})
        if not isinstance(principal_tables, dict):
            raise SecurityConfigError(f"{source}: [principals] must be a table")
        for name, table in principal_tables.items():
            where = f"{source}: [principals.{name}]"
            try:
                check_name("principal", name)
            except ValueError as exc:
                raise SecurityConfigError(f"{where}: {exc}") from None
            _unknown_keys(where, table, _PRINCIPAL_KEYS)
            p_roles = _strings(where, "roles", table.get("roles", []), "role")
            undefined = sorted(set(p_roles) - known_roles)
            if undefined:
                raise SecurityConfigError(f"{where}: undefined role(s) {', '.join(undefined)} "
                                          f"(known: {', '.join(sorted(known_roles))})")  # fmt: skip
            ns = None
            if "namespaces" in table:
                ns = frozenset(_strings(where, "namespaces", table["namespaces"], "namespace"))
                if ALL_NAMESPACES in ns:
                    ns = None
            principals[name] = _PrincipalRule(
                roles=frozenset(p_roles),
                permissions=frozenset(
                    _strings(where, "permissions", table.get("permissions", []), "permission")
                ),
                namespaces=ns,
            )
        return cls(roles, principals, source=source)

    def _effective(self, principal: Principal) -> tuple[frozenset[str], frozenset[str] | None, bool]:
        """(permissions, namespaces or None for all, is_admin) of ``principal`` under this policy."""
        rule = self._principals.get(principal.name)
        roles = principal.roles | (rule.roles if rule else frozenset())
        perms = set(principal.permissions)
        if rule:
            perms |= rule.permissions
        for role in roles:
            perms |= self.roles.get(role, frozenset())  # a role this policy does not know grants nothing
        namespaces = principal.namespaces
        if rule and rule.namespaces is not None:
            namespaces = rule.namespaces if namespaces is None else namespaces & rule.namespaces
        return frozenset(perms), namespaces, "admin" in roles


def authorize(
    principal: Principal | None,
    permission: str,
    namespace: str | None = None,
    policy: Policy | None = None,
) -> Refusal | None:
    """Decide one call: None when allowed, else the :class:`Refusal` to send.

    Args:
        principal: The authenticated caller, or None when no credential was valid.
        permission: The permission needed (from :data:`RPC_PERMISSIONS`, or a task's custom
            one); :data:`PUBLIC` allows anyone.
        namespace: The run's namespace for namespaced checks, None for cluster-wide ones.
        policy: Defaults to the built-in roles.
    """
    if permission == PUBLIC:
        return None
    if principal is None:
        return Refusal(
            "UNAUTHENTICATED", f"no valid credential; {permission} requires an authenticated principal"
        )
    perms, namespaces, is_admin = (policy or DEFAULT_POLICY).effective(principal)
    if not is_admin and permission not in perms:
        return Refusal("PERMISSION_DENIED", f"principal {principal.name!r} lacks permission {permission}")
    if namespace is not None and namespaces is not None and namespace not in namespaces:
        return Refusal("PERMISSION_DENIED", f"principal {principal.name!r} may not act in namespace {namespace!r} "
                                            f"(allowed: {', '.join(sorted(namespaces)) or 'none'})")  # fmt: skip
    return None


DEFAULT_POLICY = Policy()
