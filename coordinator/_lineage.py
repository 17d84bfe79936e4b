"""Data-access auditing and lineage of marked tasks: what the engine hands over when they finish.

Only runs with a marked task cost anything. At submit (and when a run is resumed),
:meth:`DataTap.watch` looks once at the spec's governance fields
(``TaskSpec.audit_data_access``, ``TaskSpec.track_lineage``, ``PipelineSpec.lineage``) and
remembers the run only if some task asks for either; the engine then calls
:meth:`DataTap.observe` after each turn's commit while any remembered run is unfinished.
A run without marks never reaches this module.

For a marked task that finished (SUCCEEDED or FAILED) ``observe`` takes references to
its output payload and its inputs' payloads (its upstream results, in the order the
task received them) and queues them; a background task hashes them on a thread
(SHA-256 of the encoded bytes as stored, read from the artifact store for a value that
travels by reference), then records a ``task.data_access`` audit entry and/or stores a
lineage node (``LineageNode``, written with the run in the store). Hashes and sizes
only: no value reaches the audit log or the lineage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from xpipe._codec import read_artifact
from xpipe._domain import TERMINAL_RUN_STATES
from xpipe._proto import audit_pb2
from xpipe._proto import common_pb2 as pb

from ._auditsink import AuditSink
from ._caller import caller
from ._events import RunRecord, TaskRecord
from ._store import Store

__all__ = ["DATA_ACCESS_ACTION", "DataTap", "payload_digest"]

log = logging.getLogger(__name__)

#: The audit action of a marked task's data access.
DATA_ACCESS_ACTION = "task.data_access"
_FINISHED_TASK = {pb.SUCCEEDED: "SUCCEEDED", pb.FAILED: "FAILED"}


def payload_digest(payload: pb.Payload, artifact_root: str | None) -> tuple[str, int]:
    """``(sha256 hex, bytes)`` of a payload's encoded bytes as stored (read from the artifact store if a reference).

    The same value hashes the same inline or by reference: the worker writes the inline
    bytes to the artifact file unchanged.
    """
    if payload.artifact_ref:
        data = read_artifact(payload.artifact_ref, artifact_root=artifact_root, what="a task result to hash")
    else:
        data = payload.data
    return hashlib.sha256(data).hexdigest(), len(data)


@dataclass(slots=True)
class _Watched:
    """A run with marked tasks: who submitted it, and which tasks want what."""

    principal: str
    pipeline: str
    audited: frozenset[str]
    tracked: frozenset[str]


@dataclass(slots=True)
class _Job:
    run_id: str
    record: TaskRecord
    inputs: tuple[tuple[str, pb.Payload | None], ...]  # (upstream task, its result)
    watched: _Watched


class DataTap:
    """Audit and lineage of marked tasks; see the module docs.

    Args:
        audit: Where ``task.data_access`` entries go.
        store: Where lineage nodes go (``put_lineage``).
        artifact_root: The artifact directory, to hash values that travel by reference.
    """

    def __init__(self, audit: AuditSink, store: Store, *, artifact_root: str | None = None):
        self.audit = audit
        self.store = store
        self.artifact_root = artifact_root
        #: ``--lineage-export``: (path, url) that each recorded node's OpenLineage events go to; None: off.
        self.export: tuple[str | None, str] | None = None
        #: The OpenLineage namespace of exported events.
        self.export_namespace = "xpipe"
        #: Events the export target refused or could not be reached for (they stay in the store).
        self.export_failures = 0
        #: Unfinished runs with a marked task, by run id (the engine checks it is non-empty).
        self.runs: dict[str, _Watched] = {}
        self._jobs: list[_Job] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        #: Marked tasks handled (hashed and recorded), and those whose hashing failed.
        self.handled = 0
        self.failed = 0

    def watch(self, run_id: str, spec: pb.PipelineSpec) -> None:
        """Remember ``run_id`` if a task of ``spec`` is marked (once per run; called at submit and resume)."""
        every = spec.lineage
        audited = frozenset(t.name for t in spec.tasks if t.audit_data_access)
        tracked = frozenset(t.name for t in spec.tasks if every or t.track_lineage)
        if audited or tracked:
            # The principal the coordinator signed into the spec (never one a client wrote there
            # unsigned); else, at submit, the call's principal ("local" when auth is off).
            principal = spec.principal.name if spec.principal.signature else caller().name
            self.runs[run_id] = _Watched(principal, spec.name, audited, tracked)

    def observe(self, records: Sequence[object], state) -> None:
        """Take the finished marked tasks of one committed turn (on the event loop; no hashing here)."""
        runs = self.runs
        for rec in records:
            watched = runs.get(rec.run_id)
            if watched is None:
                continue
            if isinstance(rec, TaskRecord):
                if rec.state in _FINISHED_TASK and (rec.name in watched.audited or rec.name in watched.tracked):
                    run = state.runs.get(rec.run_id)
                    if run is None:
                        continue
                    spec = run.tasks[rec.name].spec
                    names = (*spec.depends_on, *(f.source_task for f in spec.flows))
                    inputs = tuple((name, run.tasks[name].result) for name in names)
                    self._jobs.append(_Job(rec.run_id, rec, inputs, watched))
            elif isinstance(rec, RunRecord) and rec.state in TERMINAL_RUN_STATES:
                del runs[rec.run_id]
        if self._jobs:
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._run(), name="xpipe-data-tap")
            self._idle.clear()
            self._wake.set()

    async def drain(self) -> None:
        """Return once every task observed so far is recorded (tests, stop)."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Record what is queued, then stop (idempotent)."""
        if self._worker is not None:
            try:
                await asyncio.wait_for(self.drain(), timeout=10.0)
            except TimeoutError:
                log.error("stopping with %d finished tasks whose audit and lineage were not recorded", len(self._jobs))
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._jobs = self._jobs, []
            try:
                done = await asyncio.to_thread(self._digest_all, jobs)
                handled = [(job, self._handle(job, output, inputs)) for job, output, inputs in done]
                nodes = [(job, node) for job, node in handled if node is not None]
                await self.store.put_lineage([node for _job, node in nodes])
                if self.export is not None and nodes:
                    await self._export(nodes)
            except Exception:
                self.failed += len(jobs)
                log.exception("lineage of %d finished tasks could not be recorded", len(jobs))
            if not self._jobs:
                self._idle.set()

    async def _export(self, nodes) -> None:
        """Send the nodes' OpenLineage events where ``--lineage-export`` points (on a thread)."""
        from xpipe._lineage import LineageNode, node_events, write_openlineage

        events = [
            event
            for job, (_run, _task, blob) in nodes
            for event in node_events(job.watched.pipeline, LineageNode.from_proto(audit_pb2.LineageNode.FromString(blob)),
                                     namespace=self.export_namespace)
        ]  # fmt: skip
        path, url = self.export
        try:
            await asyncio.to_thread(write_openlineage, events, path=path, url=url)
        except OSError as exc:
            self.export_failures += len(events)
            log.error("lineage export of %d events failed (they stay in the store; pm.export_lineage can send "
                      "them again): %s", len(events), exc)  # fmt: skip

    def _digest_all(self, jobs: list[_Job]):
        """Hash outputs and inputs (on a thread); a value hashed once is not hashed again."""
        seen: dict[int, tuple[str, int]] = {}

        def digest(payload: pb.Payload | None) -> tuple[str, int] | None:
            if payload is None:
                return None
            key = id(payload)
            if key not in seen:
                seen[key] = payload_digest(payload, self.artifact_root)
            return seen[key]

        out = []
        for job in jobs:
            try:
                output = digest(job.record.result)
                inputs = [(name, payload, digest(payload)) for name, payload in job.inputs]
            except Exception as exc:
                self.failed += 1
                log.error("cannot hash the data of task %s/%s for audit and lineage: %s", job.run_id, job.record.name, exc)
                output, inputs = None, [(name, payload, None) for name, payload in job.inputs]
            out.append((job, output, inputs))
        return out

    def _handle(self, job: _Job, output, inputs) -> tuple[str, str, bytes] | None:
        rec, watched = job.record, job.watched
        self.handled += 1
        if rec.name in watched.audited:
            detail = {"run_id": job.run_id, "task": rec.name, "state": _FINISHED_TASK[rec.state],
                      "inputs": json.dumps([{"task": name, "sha256": d[0], "size_bytes": d[1]} if d else
                                            {"task": name, "sha256": "", "size_bytes": 0}
                                            for name, _payload, d in inputs], separators=(",", ":"))}  # fmt: skip
            if output is not None:
                detail["output_sha256"], detail["output_size_bytes"] = output[0], str(output[1])
            self.audit.record(
                principal=watched.principal, action=DATA_ACCESS_ACTION, target=f"{job.run_id}/{rec.name}",
                outcome="ok" if rec.state == pb.SUCCEEDED else "failed", stimulus_id=rec.stimulus_id, detail=detail,
            )  # fmt: skip
        if rec.name not in watched.tracked:
            return None
        node = audit_pb2.LineageNode(
            run_id=job.run_id, task=rec.name, state=_FINISHED_TASK[rec.state], started_at=rec.started_at,
            finished_at=rec.finished_at, principal=watched.principal, attempt=rec.attempt,
        )  # fmt: skip
        for name, payload, d in inputs:
            node.inputs.append(_data(job.run_id, name, payload, d))
        if rec.result is not None and output is not None:
            node.output.CopyFrom(_data(job.run_id, rec.name, rec.result, output))
        return job.run_id, rec.name, node.SerializeToString()


def _data(run_id: str, task: str, payload: pb.Payload | None, digest: tuple[str, int] | None) -> audit_pb2.LineageData:
    data = audit_pb2.LineageData(run_id=run_id, task=task)
    if digest is not None:
        data.sha256, data.size_bytes = digest
    if payload is not None:
        data.artifact_ref = payload.artifact_ref
    return data


def lineage_response(run_id: str, pipeline: str, nodes: list[bytes]) -> audit_pb2.GetLineageResponse:
    """The graph of a run from its stored nodes: edges from each node's inputs."""
    out = audit_pb2.GetLineageResponse(run_id=run_id, pipeline=pipeline)
    for blob in nodes:
        node = out.nodes.add()
        node.ParseFromString(blob)
        for data in node.inputs:
            out.edges.add(from_run_id=data.run_id, from_task=data.task, to_run_id=node.run_id, to_task=node.task,
                          sha256=data.sha256)  # fmt: skip
    return out
