"""Code trust, the part coordinator and worker share: kinds of code, grants, signatures.

A task runs one of four *kinds* of code. Importable functions and handlers are code the
worker's operator installed; a command is an argv the submitter chose; cloudpickled code
is whatever the submitter sent. The last two need a permission at submit
(:data:`KIND_PERMISSION`), a worker may refuse any kind (``--allow-code``), and each
assignment carries the run's :class:`RunPrincipal` (who submitted it and which code
permissions they held), signed by the coordinator with Ed25519, so a worker can tell for
itself that the run was allowed to send this kind of code. The signature covers the
principal's name and grants, not the run: it is made once per principal and verified once
per principal by each worker (~60 and ~190 µs here), not once per run, which a round trip
of one task would pay in full.

Pickled *arguments* are code too (unpickling calls whatever ``__reduce__`` names): a run
whose submitter lacks ``code:pickle`` has its arguments unpickled by
:func:`restricted_loads`, which builds plain builtin values only.

This module imports ``cryptography`` only inside :class:`PrincipalVerifier`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CODE_KINDS",
    "CODE_PERMISSIONS",
    "KIND_PERMISSION",
    "PICKLE_PERMISSION",
    "PrincipalVerifier",
    "code_kind",
    "key_id_of",
    "parse_allowed_code",
    "principal_message",
    "restricted_loads",
]

#: Every kind of code a task (or recovery handler) can run, in the order ``--allow-code`` lists them.
CODE_KINDS = ("import", "handler", "command", "pickle")
#: The permission cloudpickled code (and unrestricted pickled arguments) needs.
PICKLE_PERMISSION = "code:pickle"
#: The permission each kind needs at submit; kinds not listed need only ``run:submit``.
KIND_PERMISSION = {"pickle": PICKLE_PERMISSION, "command": "code:command"}
#: The permissions a run's principal carries as grants (the ones workers check).
CODE_PERMISSIONS = tuple(KIND_PERMISSION.values())
#: Tag of the signed bytes, so a signature over anything else never verifies as one of these.
_SIGNED_TAG = "xpipe-run-principal/v2"


def code_kind(task: Any) -> str:
    """The kind of code a ``TaskSpec`` (or the worker's ``TaskHead``) runs.

    A PythonCall with a ``code_hash`` is pickled code, whatever else it names: that is what
    the worker would load.
    """
    kind = task.WhichOneof("kind")
    if kind == "python":
        return "pickle" if task.python.code_hash else "import"
    return kind or "import"  # a task with no kind fails validation before it matters


def parse_allowed_code(text: str | Iterable[str]) -> frozenset[str]:
    """Kinds from ``--allow-code import,handler`` (or a list); raises ValueError naming a bad one."""
    items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    items = [p for p in items if p]
    if not items:
        raise ValueError(f"--allow-code lists no kind of code; choose from {','.join(CODE_KINDS)}")
    bad = [p for p in items if p not in CODE_KINDS]
    if bad:
        raise ValueError(f"--allow-code: unknown kind {bad[0]!r}; choose from {','.join(CODE_KINDS)}")
    return frozenset(items)


def principal_message(name: str, grants: Iterable[str]) -> bytes:
    """The bytes a run principal's signature covers: tag, name and sorted grants.

    JSON of a list keeps the fields apart (no name can pass for a grant), and sorting the
    grants makes the order they were sent in irrelevant. The run id is not covered: binding
    it would add nothing (the signature never covered the run's code, so a captured one could
    be replayed with its own run id anyway) and would cost a signature and a verification per
    run.
    """
    return json.dumps([_SIGNED_TAG, name, sorted(grants)], separators=(",", ":")).encode()


def key_id_of(public_key_raw: bytes) -> str:
    """A short, stable id of an Ed25519 public key (its raw 32 bytes): 16 hex digits of SHA-256."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


class PrincipalVerifier:
    """Checks run principals against the coordinator's public key, each signature once.

    Verifying costs ~190 µs here; a principal's signature is the same on every assignment of
    every run it submits, so each verified signature is remembered with the grants it covers
    (bounded: old entries go first), and later assignments cost a dict lookup.
    """

    def __init__(self, public_key_raw: bytes, key_id: str, *, cache_size: int = 4096):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self.key_id = key_id
        self._key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        self._verified: dict[bytes, frozenset[str]] = {}  # signature -> the grants it covers
        self._cache_size = cache_size

    def grants(self, principal: Any, run_id: str) -> frozenset[str]:
        """The verified grants of ``principal`` (a ``RunPrincipal``), sent with run ``run_id``.

        Raises:
            PermissionError: unsigned, signed by another key, or tampered; the message says
                which and names the run.
        """
        signature = principal.signature
        cached = self._verified.get(signature)
        if cached is not None:
            return cached  # what this very signature covers, whatever grants the copy claims
        if not signature:
            raise PermissionError(f"the assignment of run {run_id} carries no signed principal")
        if principal.key_id != self.key_id:
            raise PermissionError(
                f"run {run_id}'s principal is signed with key {principal.key_id!r}, "
                f"but this worker trusts key {self.key_id!r} (the coordinator it registered with)"
            )
        from cryptography.exceptions import InvalidSignature

        grants = frozenset(principal.grants)
        try:
            self._key.verify(signature, principal_message(principal.name, grants))
        except InvalidSignature:
            raise PermissionError(
                f"run {run_id}'s principal {principal.name!r} has a bad signature (altered after signing)"
            ) from None
        if len(self._verified) >= self._cache_size:
            del self._verified[next(iter(self._verified))]
        self._verified[signature] = grants
        return grants


# ---- restricted unpickling ------------------------------------------------------------

#: Globals a plain value may need (protocol 5 writes the rest with opcodes of their own).
_SAFE_GLOBALS = frozenset({
    ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "range"), ("builtins", "slice"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("collections", "OrderedDict"),
})  # fmt: skip


class _PlainValues(pickle.Unpickler):
    """Loads builtin values only; naming any other class or function is refused, not called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: without {PICKLE_PERMISSION} a run's pickled arguments may hold "
            "only plain values (None, bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, "
            "frozenset, range, slice, datetime, Decimal); pass other values as JSON, or ask for "
            f"{PICKLE_PERMISSION}"
        )


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` building plain values only; raises ``pickle.UnpicklingError`` otherwise."""
    return _PlainValues(io.BytesIO(data)).load()
