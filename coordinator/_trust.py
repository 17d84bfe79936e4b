"""Code trust at the coordinator: what a submitter may send, and the run's signed principal.

:func:`check_submission` is pure: it reads a ``PipelineSpec`` and the submitter's
:class:`~xpipe.security.Principal` and answers with the first refusal, before the engine
sees the run. :class:`RunSigner` signs the run's :class:`RunPrincipal` once per run (not per
task); every assignment of the run carries it, and workers verify it with the public key
they get on registration (see :mod:`xpipe.security._codetrust`, docs/security.md "Code trust").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xpipe._proto import common_pb2 as pb
from xpipe.security._codetrust import CODE_PERMISSIONS, KIND_PERMISSION, code_kind, key_id_of, principal_message
from xpipe.security._principal import DEFAULT_NAMESPACE, Principal
from xpipe.security._rbac import Policy, Refusal, authorize

__all__ = ["RunSigner", "check_submission", "code_grants"]

log = logging.getLogger(__name__)


def check_submission(spec: pb.PipelineSpec, principal: Principal | None, policy: Policy) -> Refusal | None:
    """The first reason ``principal`` may not submit ``spec``, or None.

    Checked, per task in order: each of its ``required_permissions`` (``@require_permission``),
    then the permission its kind of code needs (``code:pickle`` for cloudpickled code,
    ``code:command`` for commands), all in the run's namespace; then the recovery handler,
    which needs ``code:pickle`` when pickled. The refusal names the permission and the task.
    """
    namespace = spec.namespace or DEFAULT_NAMESPACE
    # Asked once per run, not per task: which code permissions are missing (usually none).
    missing = {p for p in CODE_PERMISSIONS if authorize(principal, p, namespace, policy) is not None}
    for task in spec.tasks:
        required = task.required_permissions
        if required:
            for permission in required:
                refusal = authorize(principal, permission, namespace, policy)
                if refusal is not None:
                    return _for(refusal, f"task {task.name!r} requires {permission} (@require_permission)")
        if missing:
            kind = code_kind(task)
            needed = KIND_PERMISSION.get(kind)
            if needed in missing:
                refusal = authorize(principal, needed, namespace, policy)
                return _for(refusal, f"task {task.name!r} runs {_what(kind)}")
    if spec.HasField("recovery_handler") and spec.recovery_handler.code_hash:
        refusal = authorize(principal, KIND_PERMISSION["pickle"], namespace, policy)
        if refusal is not None:
            return _for(refusal, "the pipeline's recovery handler is cloudpickled code")
    if spec.code and not any(code_kind(t) == "pickle" for t in spec.tasks):
        # Blobs nothing refers to would never run, but they are code sent by the submitter.
        refusal = authorize(principal, KIND_PERMISSION["pickle"], namespace, policy)
        if refusal is not None:
            return _for(refusal, "the pipeline carries cloudpickled code")
    return None


def _what(kind: str) -> str:
    return {"pickle": "cloudpickled code", "command": "a command"}.get(kind, kind)


def _for(refusal: Refusal, why: str) -> Refusal:
    return Refusal(refusal.code, f"{refusal.message}: {why}")


def code_grants(principal: Principal | None, namespace: str, policy: Policy) -> tuple[str, ...]:
    """The code permissions ``principal`` holds in ``namespace``: what its runs' grants say."""
    return tuple(p for p in CODE_PERMISSIONS if authorize(principal, p, namespace, policy) is None)


#: Principals whose signatures a coordinator keeps (oldest dropped first, signed again if seen).
_SIGNED_CACHE = 4096


class RunSigner:
    """The coordinator's Ed25519 key: signs run principals; workers get its public half.

    One key per coordinator process by default (:meth:`generate`); coordinators that hand
    runs over to each other (HA) load the same key with :meth:`load` (``--signing-key-file``),
    and a recovered run signed with another key is signed again when it is restored.
    """

    def __init__(self, private_key) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = private_key
        #: The raw 32-byte public key, sent to workers in ``Registered.signing_key``.
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id_of(self.public_key)
        #: (name, sorted grants) -> signature: a principal is signed once, not once per run.
        self._signed: dict[tuple[str, tuple[str, ...]], bytes] = {}

    @classmethod
    def generate(cls) -> RunSigner:
        """A fresh key, for this process only."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunSigner:
        """The Ed25519 private key in a PEM file (``openssl genpkey -algorithm ed25519``).

        Raises:
            ValueError: the file is missing, unreadable, not PEM, or not an Ed25519 key
                (the message names the file).
        """
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"--signing-key-file {path}: cannot read it: {exc.strerror}") from None
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--signing-key-file {path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"--signing-key-file {path}: holds a {type(key).__name__}, expected an Ed25519 key")
        if path.stat().st_mode & 0o077:
            log.warning("--signing-key-file %s can be read by group or others; chmod 600 it", path)
        return cls(key)

    def sign(self, name: str, grants: tuple[str, ...], run_id: str) -> pb.RunPrincipal:
        """The signed ``RunPrincipal`` of run ``run_id`` (~60 µs once per principal, then a lookup).

        ``run_id`` is carried for the logs and the story; the signature covers the name and
        grants only (see :func:`~xpipe.security._codetrust.principal_message`).
        """
        grants = tuple(sorted(grants))
        signature = self._signed.get((name, grants))
        if signature is None:
            signature = self._key.sign(principal_message(name, grants))
            if len(self._signed) >= _SIGNED_CACHE:
                del self._signed[next(iter(self._signed))]
            self._signed[(name, grants)] = signature
        return pb.RunPrincipal(name=name, grants=grants, run_id=run_id, signature=signature, key_id=self.key_id)

    def resign(self, spec: pb.PipelineSpec, run_id: str) -> None:
        """Sign a restored run's stored principal again when another key signed it.

        The store is trusted (it holds the runs themselves); the signature only has to be
        one the workers of *this* coordinator can check.
        """
        old = spec.principal
        if old.key_id == self.key_id and old.signature:
            return
        log.info("run %s: its principal %r (signed with key %r) is signed again with key %s",
                 run_id, old.name, old.key_id, self.key_id)  # fmt: skip
        spec.principal.CopyFrom(self.sign(old.name, tuple(old.grants), run_id))
