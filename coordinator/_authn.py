"""Who is calling and may they: the coordinator's authentication and RBAC, per call.

Built only when auth is on (``--auth``, or ``--tls-client-auth require``); a coordinator
without it binds no wrapper and reads no metadata (see ``_guard``). :class:`CallAuth` is
asked once per call, by the wrapper :meth:`CallGuard.wrap` bound to each handler at
registration, and once per worker stream, when it opens (``_WorkerService.Connect``).

Identity: a bearer token (or LDAP user and password) in the ``authorization`` metadata
wins over the mTLS client certificate when both come, because the token names the person
or service while one client certificate may be shared by many; a token that is sent but
not valid is refused (UNAUTHENTICATED) even under a valid certificate: a presented
credential never silently falls back to another. Without a token, a certificate carrying
an xpipe identity is the principal (``worker`` certificates hold role ``worker``; other
certificates get their roles from the policy).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from xpipe.security._auth import AUTHORIZATION_KEY, Authenticator, parse_authorization
from xpipe.security._certs import identity_from_certificate
from xpipe.security._errors import AuthUnavailableError, SecurityConfigError
from xpipe.security._principal import DEFAULT_NAMESPACE, Principal
from xpipe.security._rbac import NAMESPACED_RPCS, RPC_AUDIT, Policy, Refusal, authorize

from ._caller import CALLER

if TYPE_CHECKING:
    from ._auditsink import AuditSink

__all__ = ["CallAuth", "Security"]

log = logging.getLogger(__name__)

#: Peer certificates whose identity was read: a client keeps one connection for many
#: calls, so parsing its certificate once is enough.
_CERT_CACHE = 256
#: Run ids whose namespace was looked up in the store (finished runs); live runs need none.
_NAMESPACE_CACHE = 4096
_SUBMIT_PERMISSION = "run:submit"
_READ_PERMISSION = "run:read"
_WATCH = "/xpipe.v1.PipelineService/WatchRun"
_ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Security:
    """How a coordinator serves: its TLS credentials and how it knows its callers.

    Attributes:
        credentials: gRPC server credentials (``--tls-cert``/``--tls-key``); None: plaintext.
        authenticator: The ``--auth`` source; None: no tokens or passwords are read.
        client_certs: mTLS (``--tls-client-auth require``): client certificates are identities.
        blocking: The authenticator does network I/O (LDAP): run it off the event loop.
    """

    credentials: Any = None
    authenticator: Authenticator | None = None
    client_certs: bool = False
    blocking: bool = False

    @property
    def auth_on(self) -> bool:
        """Whether calls are authenticated at all (else every caller is ``LOCAL``)."""
        return self.authenticator is not None or self.client_certs


@functools.lru_cache(maxsize=_CERT_CACHE)
def _cert_principal(pem: bytes) -> Principal | None:
    try:
        identity = identity_from_certificate(pem)
    except SecurityConfigError:
        return None
    return identity.to_principal() if identity is not None else None


class Unauthenticated(Exception):
    """A credential was presented and is not valid (refused even under a valid certificate)."""


async def principal_from_authorization(security: Security, header: str) -> Principal:
    """The principal of an ``authorization`` value (gRPC metadata, or an HTTP header).

    Raises:
        Unauthenticated: it is malformed, or names no valid credential.
        AuthUnavailableError: the identity source cannot answer now.
    """
    credential = parse_authorization(header)
    if credential is None:
        raise Unauthenticated("malformed authorization metadata (expected 'Bearer <token>' or 'Basic ...')")
    if security.blocking:
        principal = await asyncio.to_thread(security.authenticator.check, credential)
    else:
        principal = security.authenticator.check(credential)
    if principal is None:
        raise Unauthenticated("the credential sent is not valid (unknown, revoked or expired)")
    return principal


class CallAuth:
    """Authenticates a call and authorizes it against the policy; see the module docs.

    Args:
        security: What identifies callers.
        policy: The current policy (read per call: ``Coordinator.policy`` may be replaced).
        audit: The current audit sink.
        run_namespace: The namespace of a run id, or None when no such run exists.
    """

    def __init__(
        self,
        security: Security,
        *,
        policy: Callable[[], Policy],
        audit: Callable[[], AuditSink],
        run_namespace: Callable[[str], Awaitable[str | None]],
    ) -> None:
        self.security = security
        self._policy = policy
        self._audit = audit
        self.run_namespace = run_namespace

    async def identify(self, context) -> Principal | None:
        """The caller's principal, or None when it presented nothing valid.

        Raises:
            Unauthenticated: a token or password was sent and is not valid.
            AuthUnavailableError: the identity source cannot answer now.
        """
        security = self.security
        header = None
        if security.authenticator is not None:
            for key, value in context.invocation_metadata() or ():
                if key == AUTHORIZATION_KEY:
                    header = value
                    break
        if header is not None:
            return await principal_from_authorization(security, header)
        if security.client_certs:
            certs = context.auth_context().get("x509_pem_cert")
            if certs:
                return _cert_principal(certs[0])
        return None

    async def admit(self, method: str, permission: str, request, context) -> Principal:
        """Check one call; set :data:`CALLER`; abort with the refusal otherwise (raises)."""
        target = getattr(request, "run_id", "") if request is not None else ""
        try:
            principal = await self.identify(context)
        except Unauthenticated as exc:
            await self._refuse(context, method, _ANONYMOUS, target, Refusal("UNAUTHENTICATED", f"{method}: {exc}"))
        except AuthUnavailableError as exc:
            # Fail closed, and say it is the identity source: the client retries UNAVAILABLE.
            log.warning("identity source unavailable for %s: %s", method, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot check credentials now: {exc}")
        namespace = None
        if method in NAMESPACED_RPCS and request is not None:
            namespace, target = await self._namespace(method, request)
        policy = self._policy()
        refusal = authorize(principal, permission, namespace, policy)
        if refusal is None and method == _WATCH and request.HasField("submit"):
            refusal = authorize(principal, _SUBMIT_PERMISSION, namespace, policy)
        name = principal.name if principal is not None else _ANONYMOUS
        if refusal is not None:
            await self._refuse(context, method, name, target, refusal)
        CALLER.set(principal)
        if method in RPC_AUDIT:
            self._audit().record(principal=name, action=method, target=target)
        return principal

    async def readable(self, run_ids: list[str]) -> set[str] | None:
        """Those of ``run_ids`` the caller may read (ListRuns); None: all of them."""
        principal = CALLER.get()
        policy = self._policy()
        if policy.effective(principal)[1] is None:  # every namespace: nothing to look up
            return None
        return {run_id for run_id in run_ids
                if authorize(principal, _READ_PERMISSION, await self.run_namespace(run_id), policy) is None}  # fmt: skip

    async def _namespace(self, method: str, request) -> tuple[str | None, str]:
        """(the namespace the call acts in, its audit target)."""
        if method == _WATCH and request.HasField("submit"):
            return request.submit.pipeline.namespace or DEFAULT_NAMESPACE, request.submit.pipeline.name
        pipeline = getattr(request, "pipeline", None)
        if pipeline is not None and not getattr(request, "run_id", ""):  # SubmitPipeline
            return pipeline.namespace or DEFAULT_NAMESPACE, pipeline.name
        run_id = request.run_id
        task = getattr(request, "task", "")  # results and logs: the audit target names the task
        # An unknown run: the permission alone is checked, and the handler answers NOT_FOUND.
        return await self.run_namespace(run_id), f"{run_id}/{task}" if task else run_id

    async def _refuse(self, context, method: str, name: str, target: str, refusal: Refusal) -> None:
        self._audit().record(principal=name, action=method, target=target,
                             outcome=f"{refusal.code}: {refusal.message}")  # fmt: skip
        log.info("refused %s for %s: %s", method, name, refusal.message)
        await context.abort(grpc.StatusCode[refusal.code], refusal.message)


class NamespaceCache:
    """Namespaces of runs the engine no longer holds, read from the store once each."""

    def __init__(self, live: Callable[[str], str | None], stored: Callable[[str], Awaitable[str | None]]):
        self._live = live
        self._stored = stored
        self._known: OrderedDict[str, str] = OrderedDict()

    async def __call__(self, run_id: str) -> str | None:
        namespace = self._live(run_id)
        if namespace is not None:
            return namespace
        namespace = self._known.get(run_id)
        if namespace is None:
            namespace = await self._stored(run_id)
            if namespace is None:
                return None
            self._known[run_id] = namespace
            if len(self._known) > _NAMESPACE_CACHE:
                self._known.popitem(last=False)
        return namespace
