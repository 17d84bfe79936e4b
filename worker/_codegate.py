"""The worker's code-trust gate: which assignments its executor may run at all.

Checked in the worker's parent process, on the :class:`AssignmentHead` it reads anyway,
before the bytes reach an executor child, so refused code is never loaded. An assignment
passes when this worker allows its kind of code (``--allow-code``) and its run principal
is signed by the coordinator the worker registered with and grants that kind
(``code:pickle`` for cloudpickled code, ``code:command`` for commands). The placement
keeps refused kinds away already; this is defense in depth against a coordinator bug or
someone else who reached the worker's stream.
"""

from __future__ import annotations

import logging

from xpipe._proto import worker_pb2
from xpipe.security._codetrust import CODE_KINDS, KIND_PERMISSION, PrincipalVerifier

__all__ = ["CodeGate", "Refused"]

log = logging.getLogger(__name__)


class Refused(Exception):
    """Why an assignment may not run here; ``error_type`` is what its failure reports."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


class CodeGate:
    """Allowed kinds and the coordinator's public key; :meth:`check` judges one assignment.

    Args:
        allowed: kinds of code this worker runs (:data:`CODE_KINDS` by default).
    """

    def __init__(self, allowed: frozenset[str] = frozenset(CODE_KINDS)):
        self.allowed = allowed
        self._verifier: PrincipalVerifier | None = None

    def trust(self, signing_key: bytes, key_id: str) -> None:
        """Trust principals signed by this key (``Registered.signing_key``); empty: trust none."""
        if not signing_key:
            log.warning("the coordinator sent no signing key: every assignment will be refused")
            self._verifier = None
        elif self._verifier is None or self._verifier.key_id != key_id:
            log.info("runs' principals are checked with the coordinator's key %s", key_id)
            self._verifier = PrincipalVerifier(signing_key, key_id)

    def check(self, head: worker_pb2.AssignmentHead) -> None:
        """Return if ``head`` may run here; else raise :class:`Refused` (never retried elsewhere)."""
        task = head.task
        kind = task.WhichOneof("kind")
        if kind == "python":  # code_kind, inlined: this runs for every assignment
            kind = "pickle" if task.python.code_hash else "import"
        run_id = head.attempt.run_id
        if kind not in self.allowed:
            error_type = "PICKLED_CODE_REFUSED" if kind == "pickle" else "TASK_FAILURE"
            raise Refused(
                error_type,
                f"task {task.name!r} runs {kind} code, which this worker refuses "
                f"(--allow-code {','.join(k for k in CODE_KINDS if k in self.allowed)})",
            )
        if self._verifier is None:
            raise Refused("TASK_FAILURE", f"task {task.name!r}: this worker holds no coordinator signing key "
                                          "to check the run's principal with; refused")  # fmt: skip
        try:
            grants = self._verifier.grants(head.principal, run_id)
        except PermissionError as exc:
            raise Refused("TASK_FAILURE", f"task {task.name!r} refused: {exc}") from None
        needed = KIND_PERMISSION.get(kind)
        if needed is not None and needed not in grants:
            raise Refused(
                "PICKLED_CODE_REFUSED" if kind == "pickle" else "TASK_FAILURE",
                f"task {task.name!r} runs {kind} code, but run {run_id}'s principal "
                f"{head.principal.name!r} was not granted {needed}",
            )
