"""The stored audit log: an :class:`~._auditsink.AuditSink` that chains entries and writes them in batches.

A call handler's :meth:`AuditLog.record` only appends to an in-memory queue: it never
waits for storage. One writer task takes up to ``batch_entries`` queued entries at a time,
links them to the chain (``xpipe.security._audit``: each entry holds the previous one's
hash) and writes them with the new head hash in one store transaction, then waits
``interval_s`` for more. Entries are chained when they are written, not when recorded, so
an HA coordinator that becomes leader continues the chain from the head stored by the
one before it; a coordinator that does not lead keeps its entries queued and writes none.

When the store refuses a write (a full disk, etcd unreachable, a lost leadership) the
batch stays queued and the writer retries with backoff, logging the fault once and the
recovery once. The queue holds at most ``max_queued`` entries: past it, new entries are
dropped, counted (:attr:`AuditLog.dropped`, shown by ``xpipe audit``), logged, and the
next write puts an ``audit.dropped`` entry with the count into the chain itself, so the
gap is on record. On stop the queue is flushed; what cannot be written then is logged
with its count.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice

from xpipe._backoff import Backoff
from xpipe.security._audit import OUTCOMES, AuditEntry, entry_hash
from xpipe.security._rbac import RPC_AUDIT

from ._auditsink import AuditSink
from ._caller import LOCAL, caller
from ._guard import _SELF_CHECKED
from ._store import Store

__all__ = ["AuditLog", "audit_local_calls", "outcome_fields"]

log = logging.getLogger(__name__)

#: WatchRun, which submits when its request carries ``submit`` (see :func:`_recording_watch`).
SUBMITTING_WATCH = "/xpipe.v1.PipelineService/WatchRun"
#: Refusal status codes: an outcome naming one of these is ``refused``; another code is ``failed``.
_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def outcome_fields(outcome: str) -> tuple[str, dict[str, str]]:
    """The chain's outcome (``ok``, ``refused``, ``failed``) for what a caller reported.

    Callers may report a status (``PERMISSION_DENIED: principal 'v' lacks run:submit``);
    the entry keeps it whole in ``detail["status"]``.
    """
    if outcome in OUTCOMES:
        return outcome, {}
    code = outcome.split(":", 1)[0].strip()
    return ("refused" if code in _REFUSALS else "failed"), {"status": outcome}


class AuditLog:
    """Queue, chain and store audit entries; see the module docs.

    Args:
        store: Where entries and the head go (``append_audit``, ``audit_head``).
        leading: True while this coordinator may write (HA: it leads). Entries recorded
            while it does not stay queued.
        batch_entries: Most entries in one transaction.
        interval_s: How long the writer gathers entries before a write.
        max_queued: Most entries kept while the store refuses writes.
    """

    def __init__(
        self,
        store: Store,
        *,
        leading: Callable[[], bool] = lambda: True,
        batch_entries: int = 100,
        interval_s: float = 0.1,
        max_queued: int = 100_000,
    ):
        if batch_entries < 1 or max_queued < batch_entries:
            raise ValueError(f"batch_entries ({batch_entries}) must be >= 1 and <= max_queued ({max_queued})")
        self.store = store
        self._leading = leading
        self.batch_entries = batch_entries
        self.interval_s = interval_s
        self.max_queued = max_queued
        #: Raw entries ``(at, principal, action, target, outcome, stimulus_id, detail)``: made
        #: into chained :class:`AuditEntry` objects on a thread when written (~20 µs each).
        self._queue: deque[tuple] = deque()
        #: (seq, hash) of the last stored entry; None until read from the store (and after a fault).
        self._head: tuple[int, str] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task | None = None
        self._stopping = False
        self._failing = False
        self._backoff = Backoff(initial_s=0.2, max_s=5.0, jitter=0.2)
        #: Entries dropped because the queue was full, since this coordinator started.
        self.dropped = 0
        self._dropped_unreported = 0
        #: Entries stored by this coordinator.
        self.written = 0

    @property
    def queued(self) -> int:
        """Entries recorded but not stored yet."""
        return len(self._queue)

    def record(
        self,
        *,
        principal: str,
        action: str,
        target: str = "",
        outcome: str = "ok",
        stimulus_id: str = "",
        detail: Mapping[str, str] | None = None,
    ) -> None:
        """Queue one entry (see :class:`~._auditsink.AuditSink`); never blocks, never raises for storage."""
        if self._stopping:
            log.error("audit entry after stop not stored: %s %s %s by %s", action, target, outcome, principal)
            return
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            self._dropped_unreported += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit queue full (%d entries; the store refuses writes): %d entries dropped so far",
                          self.max_queued, self.dropped)  # fmt: skip
            return
        kind, extra = outcome_fields(outcome)
        fields = {**detail, **extra} if detail else extra
        self._queue.append((time.time(), principal, action, target, kind, stimulus_id, fields))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="xpipe-audit-writer")
        self._wake.set()

    async def flush(self) -> None:
        """Store everything queued now (when leading); raises what the store raised."""
        async with self._lock:  # one writer at a time: each batch continues the last one's head
            if not self._leading():
                self._head = None  # another coordinator writes; on leading, continue from its head
                return
            try:
                while self._queue:
                    await self._write_batch()
            except Exception as exc:
                self._head = None  # read it again: a write may have half-happened, or another leader wrote
                if not self._failing:
                    log.error("audit log: the store refused a write; %d entries stay queued (up to %d): %s",
                              len(self._queue), self.max_queued, exc)  # fmt: skip
                self._failing = True
                raise
            if self._failing:  # whichever flush gets through first (the writer's, or a GetAudit's) says so
                log.warning("audit log: the store takes writes again; %d entries were dropped meanwhile", self.dropped)
                self._failing = False
                self._backoff.reset()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the writer and flush what is queued (idempotent); logs what could not be stored."""
        if self._stopping:
            return
        self._stopping = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        try:
            await asyncio.wait_for(self.flush(), timeout=timeout_s)
        except Exception as exc:
            log.error("%d audit entries could not be stored at stop: %s", len(self._queue), exc)
            return
        if self._queue:
            log.error("%d audit entries not stored at stop: this coordinator does not lead", len(self._queue))
        if self.dropped:
            log.error("%d audit entries were dropped while the store refused writes", self.dropped)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self.batch_entries:
                await asyncio.sleep(self.interval_s)  # gather a batch
            try:
                await self.flush()
            except Exception:  # logged by flush(); the entries stay queued
                await asyncio.sleep(self._backoff.next_delay())
                self._wake.set()
                continue
            if self._queue:  # not leading: look again later
                await asyncio.sleep(self.interval_s)
                self._wake.set()

    async def _write_batch(self) -> None:
        if self._head is None:
            self._head = await self._load_head()
        reported = self._dropped_unreported
        raw = list(islice(self._queue, self.batch_entries - (1 if reported else 0)))
        if reported:
            raw.insert(0, (time.time(), "coordinator", "audit.dropped", "", "failed", "", {"count": str(reported)}))
        linked = await asyncio.to_thread(_link, raw, self._head)  # hashing stays off the event loop
        await self.store.append_audit(linked)
        for _ in range(len(raw) - (1 if reported else 0)):
            self._queue.popleft()
        self._dropped_unreported -= reported
        self._head = (linked[-1].seq, linked[-1].hash)
        self.written += len(linked)

    async def _load_head(self) -> tuple[int, str]:
        """The stored head; says so in the log when the newest stored entry does not match it."""
        seq, digest = await self.store.audit_head()
        if seq:
            page = await self.store.read_audit(after_seq=seq - 1, limit=1)
            newest = page.entries[0] if page.entries else None
            if newest is None or newest.seq != seq or newest.hash != digest:
                log.error("audit log: the newest stored entry does not match the stored head (seq %d): entries were "
                          "removed or changed; `xpipe audit --verify` names the first", seq)  # fmt: skip
        return seq, digest


def _link(raw: list[tuple], head: tuple[int, str]) -> list[AuditEntry]:
    """Queued raw entries as :class:`AuditEntry` objects chained after ``head`` (seq, hash).

    The same links as ``_audit.chain`` (``verify`` checks them), made without its two
    ``dataclasses.replace`` calls per entry, which cost more than the hash itself.
    """
    seq, prev_hash = head
    out: list[AuditEntry] = []
    for fields in raw:
        seq += 1
        digest = entry_hash(prev_hash, AuditEntry(seq, *fields, prev_hash=prev_hash))
        out.append(AuditEntry(seq, *fields, prev_hash=prev_hash, hash=digest))
        prev_hash = digest
    return out


def audit_local_calls(servicer, audit: AuditSink):
    """Record the audited calls (``RPC_AUDIT``) of ``servicer`` when auth is off; returns it.

    With auth on, the call guard records each admitted call and each refusal under the
    caller's name. With auth off nothing identifies callers, yet mutations and data reads
    still belong in the log: these wrappers record them as ``local``. They are the
    innermost layer (the servicer's own methods), so they see the principal the guard
    set, and record only when it is :data:`~._caller.LOCAL` (auth off): never twice.
    Unary calls are recorded when they end (a failure with its status), server streams
    (logs) when they open; the worker stream is left alone (see :func:`_recording`), as
    are methods not in ``RPC_AUDIT``: no cost.
    """
    names = {cls.__name__.removesuffix("Servicer") for cls in type(servicer).__mro__ if cls.__name__.endswith("Servicer")}
    for method in (*RPC_AUDIT, SUBMITTING_WATCH):
        service, _, name = method.rpartition("/")
        if service.rpartition(".")[2] not in names or not hasattr(servicer, name):
            continue
        wrap = _recording_watch if method == SUBMITTING_WATCH else _recording
        setattr(servicer, name, wrap(getattr(servicer, name), method, audit))
    return servicer


def _recording_watch(inner, method: str, audit: AuditSink):
    """WatchRun carrying a ``submit`` is a submission (the SDK's usual one): record it, for every caller.

    ``RPC_AUDIT`` cannot list WatchRun (a plain watch is a read of metadata), so the call
    guard does not record it with auth on either; this does, once the run exists (its
    first event names it), or with the status of the failure that came first.
    """

    @functools.wraps(inner)
    async def watch(request, context):
        if not request.HasField("submit"):
            async for event in inner(request, context):
                yield event
            return
        recorded = False
        try:
            async for event in inner(request, context):
                if not recorded:
                    recorded = True
                    run_id = event.summary.run_id
                    audit.record(principal=caller().name, action=method, target=run_id,
                                 stimulus_id=f"rpc-submit-{run_id}", detail={"submit": request.submit.pipeline.name})  # fmt: skip
                yield event
        except BaseException:
            if not recorded:
                code = context.code()
                status = f"{code.name if code is not None else 'CANCELLED'}: {context.details() or ''}"
                audit.record(principal=caller().name, action=method, target=request.submit.pipeline.name,
                             outcome=status, detail={"submit": request.submit.pipeline.name})  # fmt: skip
            raise

    return watch


def _target(request, reply=None) -> tuple[str, str]:
    """(target, stimulus id) of an audited call: its run (a submit's new run), else what it names."""
    run_id = getattr(request, "run_id", "") or getattr(reply, "run_id", "")
    if run_id:
        task = getattr(request, "task", "")
        kind = "submit" if hasattr(request, "pipeline") else "cancel" if hasattr(reply, "cancelled") else ""
        return (f"{run_id}/{task}" if task else run_id), (f"rpc-{kind}-{run_id}" if kind else "")
    for field in ("name", "names", "packages"):  # DrainWorker, ForgetWorkers, InstallDependencies
        value = getattr(request, field, "")
        if value:
            return (value if isinstance(value, str) else ",".join(value)), ""
    return "", ""


def _recording(inner, method: str, audit: AuditSink):
    if getattr(inner, _SELF_CHECKED, False):
        # The worker stream (the hot path): a wrapper would add a layer to every message. With
        # auth off a connecting worker has no identity to record; its registration is logged.
        return inner
    if inspect.isasyncgenfunction(inner):  # a server stream (logs): recorded as it opens

        @functools.wraps(inner)
        async def stream(request, context):
            if caller() is LOCAL:
                audit.record(principal=LOCAL.name, action=method, target=_target(request)[0])
            async for item in inner(request, context):
                yield item

        return stream

    @functools.wraps(inner)
    async def unary(request, context):
        if caller() is not LOCAL:
            return await inner(request, context)
        try:
            reply = await inner(request, context)
        except BaseException:
            code = context.code()
            status = f"{code.name if code is not None else 'CANCELLED'}: {context.details() or ''}"
            audit.record(principal=LOCAL.name, action=method, target=_target(request)[0], outcome=status)
            raise
        target, stimulus_id = _target(request, reply)
        audit.record(principal=LOCAL.name, action=method, target=target, stimulus_id=stimulus_id)
        return reply

    return unary
