"""``GovernanceService``: retention (``CollectGarbage``) and forgetting (``ForgetSubject``) over gRPC.

The work is in ``_retention`` and ``_forget``; this translates requests and maps failures to
one status code each. Both calls are audited with their counts (never the subject's value).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from xpipe._proto import governance_pb2_grpc

from ._caller import caller
from ._forget import check_subject, forget_subject
from ._store import StoreFault

if TYPE_CHECKING:
    from ._retention import Retention
    from ._server import Coordinator

__all__ = ["GovernanceServicer"]

log = logging.getLogger(__name__)


async def _abort_failure(context, exc: Exception, what: str) -> None:
    if isinstance(exc, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what}: {exc}")
    if isinstance(exc, StoreFault) and exc.disk_full:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what}: {exc}")
    # A store that does not answer, a deposed leader (etcd fencing): nothing half-done is
    # wrong (each step is a transaction); the caller tries again.
    log.warning("%s failed: %s", what, exc)
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{what} failed: {type(exc).__name__}: {exc}; try again")


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    @property
    def retention(self) -> Retention | None:
        return getattr(self.c, "retention", None)

    async def CollectGarbage(self, request, context):
        retention = self.retention
        if retention is None or not retention.policy.enabled:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "retention is off on this coordinator: start it with --retention-days N "
                "(and/or --retention NAMESPACE=DAYS) to have finished runs deleted",
            )
        try:
            out = await retention.collect(dry_run=request.dry_run)
        except Exception as exc:  # noqa: BLE001 - each is mapped to a status code and logged there
            await _abort_failure(context, exc, "CollectGarbage")
        self.c.audit.record(
            principal=caller().name, action="governance.collect_garbage", outcome="ok",
            detail={"dry_run": str(request.dry_run).lower(), "runs": str(len(out.runs)),
                    "files": str(out.files), "bytes": str(out.bytes)},
        )  # fmt: skip
        return out

    async def ForgetSubject(self, request, context):
        problem = check_subject(request.field, request.value)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            out = await forget_subject(self.c, request.field, request.value)
        except Exception as exc:  # noqa: BLE001 - each is mapped to a status code and logged there
            await _abort_failure(context, exc, "ForgetSubject")
        self.c.audit.record(
            principal=caller().name, action="governance.forget_subject", target=request.field, outcome="ok",
            detail={"records_removed": str(out.records_removed), "log_lines_removed": str(out.log_lines_removed),
                    "runs_touched": str(out.runs_touched), "not_inspected": str(len(out.not_inspected))},
        )  # fmt: skip
        return out
