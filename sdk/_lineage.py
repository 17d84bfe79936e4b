"""A run's lineage graph and its OpenLineage export; the audit log as the SDK reads it.

The coordinator records, for each task marked ``@track_data_lineage`` (or every task of a
pipeline with ``enable_lineage()``), the content hashes and sizes of its inputs and output,
the upstream tasks they came from, and artifact references: never the values.
:class:`LineageGraph` is that graph; :meth:`LineageGraph.openlineage_events` turns each
node into OpenLineage run events (``START`` then ``COMPLETE`` or ``FAIL``), datasets named
by content hash, and :func:`write_openlineage` writes them as JSON lines to a file or
POSTs each to an HTTP endpoint (OpenLineage's HTTP transport: ``/api/v1/lineage``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._domain import VERSION
from .security._audit import AuditEntry

__all__ = [
    "OPENLINEAGE_SCHEMA_URL",
    "AuditPage",
    "LineageData",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "node_events",
    "parse_lineage_target",
    "write_openlineage",
]

log = logging.getLogger(__name__)

#: The OpenLineage spec version our events follow (``schemaURL`` of each event).
OPENLINEAGE_SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
_PARENT_FACET_URL = "https://openlineage.io/spec/facets/1-0-1/ParentRunFacet.json#/$defs/ParentRunFacet"
#: ``producer`` of each event: what made it (a URI, as the spec asks).
PRODUCER = f"https://pypi.org/project/xpipe-cluster/{VERSION}"
#: OpenLineage run ids are UUIDs; ours are derived from the xpipe ids, so the same task's
#: START and COMPLETE (and any re-export) share one.
_RUN_UUID_NAMESPACE = uuid.UUID("6f1d7a52-3c55-4c1e-9a5e-1d0c5b8f3a10")
#: How long one POST may take.
POST_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class LineageData:
    """A task's input or output, by content.

    Attributes:
        sha256: SHA-256 (hex) of the encoded value as stored; ``""`` when it could not be read.
        size_bytes: Bytes the hash covers.
        artifact_ref: Where the value lives when it travels by reference; else ``""``.
        task: The task that produced it.
        run_id: That task's run.
    """

    sha256: str
    size_bytes: int
    artifact_ref: str
    task: str
    run_id: str

    @classmethod
    def from_proto(cls, msg: Any) -> LineageData:
        return cls(msg.sha256, msg.size_bytes, msg.artifact_ref, msg.task, msg.run_id)


@dataclass(frozen=True, slots=True)
class LineageNode:
    """One tracked task that finished.

    Attributes:
        run_id: Its run.
        task: Its name.
        state: ``SUCCEEDED`` or ``FAILED``.
        started_at: Unix seconds.
        finished_at: Unix seconds.
        inputs: Its upstream results, in the order it received them.
        output: Its result; None when it failed.
        principal: Who submitted the run.
        attempt: The attempt that finished.
    """

    run_id: str
    task: str
    state: str
    started_at: float
    finished_at: float
    inputs: tuple[LineageData, ...]
    output: LineageData | None
    principal: str
    attempt: int

    @classmethod
    def from_proto(cls, msg: Any) -> LineageNode:
        return cls(
            msg.run_id, msg.task, msg.state, msg.started_at, msg.finished_at,
            tuple(LineageData.from_proto(d) for d in msg.inputs),
            LineageData.from_proto(msg.output) if msg.HasField("output") else None,
            msg.principal, msg.attempt,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LineageEdge:
    """Data that went from one task to another (``sha256`` of what went)."""

    from_run_id: str
    from_task: str
    to_run_id: str
    to_task: str
    sha256: str


@dataclass(frozen=True, slots=True)
class LineageGraph:
    """A run's lineage: its tracked tasks (nodes) and the data between them (edges).

    Attributes:
        run_id: The run.
        pipeline: The run's pipeline name.
        nodes: Tracked tasks that finished, by name.
        edges: One per input of a node, from the task that produced it.
    """

    run_id: str
    pipeline: str
    nodes: tuple[LineageNode, ...]
    edges: tuple[LineageEdge, ...]

    @classmethod
    def from_proto(cls, msg: Any) -> LineageGraph:
        return cls(
            msg.run_id, msg.pipeline, tuple(LineageNode.from_proto(n) for n in msg.nodes),
            tuple(LineageEdge(e.from_run_id, e.from_task, e.to_run_id, e.to_task, e.sha256) for e in msg.edges),
        )  # fmt: skip

    def node(self, task: str) -> LineageNode:
        """The node of ``task``; KeyError naming the tracked tasks if it has none."""
        for n in self.nodes:
            if n.task == task:
                return n
        raise KeyError(f"no lineage for task {task!r} of run {self.run_id}; tracked: {[n.task for n in self.nodes]}")

    def openlineage_events(self, *, namespace: str = "xpipe") -> list[dict[str, Any]]:
        """Each node as OpenLineage run events: ``START`` at its start, then ``COMPLETE`` or ``FAIL``.

        Jobs are named ``<pipeline>.<task>`` in ``namespace``; each event's parent facet names
        the xpipe run. Datasets are named ``sha256:<hex>`` (content, not place).

        Args:
            namespace: The OpenLineage namespace of jobs and datasets.
        """
        return [event for node in self.nodes for event in node_events(self.pipeline, node, namespace=namespace)]


def node_events(pipeline: str, node: LineageNode, *, namespace: str = "xpipe") -> list[dict[str, Any]]:
    """One tracked task's OpenLineage run events (see :meth:`LineageGraph.openlineage_events`)."""
    if not namespace:
        raise ValueError("namespace must not be empty (OpenLineage requires job.namespace)")
    run = {
        "runId": str(uuid.uuid5(_RUN_UUID_NAMESPACE, f"{node.run_id}/{node.task}/{node.attempt}")),
        "facets": {"parent": {
            "_producer": PRODUCER, "_schemaURL": _PARENT_FACET_URL,
            "run": {"runId": str(uuid.uuid5(_RUN_UUID_NAMESPACE, node.run_id))},
            "job": {"namespace": namespace, "name": pipeline},
        }},
    }  # fmt: skip
    job = {"namespace": namespace, "name": f"{pipeline}.{node.task}"}
    inputs = [_dataset(namespace, d) for d in node.inputs if d.sha256]
    outputs = [_dataset(namespace, node.output)] if node.output is not None and node.output.sha256 else []
    ended = "COMPLETE" if node.state == "SUCCEEDED" else "FAIL"
    return [
        {"eventType": kind, "eventTime": _iso(at), "run": run, "job": job, "inputs": inputs,
         "outputs": outputs if kind != "START" else [], "producer": PRODUCER, "schemaURL": OPENLINEAGE_SCHEMA_URL}
        for kind, at in (("START", node.started_at or node.finished_at), (ended, node.finished_at))
    ]  # fmt: skip


def parse_lineage_target(text: str) -> tuple[str | None, str]:
    """``--lineage-export``: ``file:PATH`` (JSON lines) or ``http(s)://HOST[:PORT]/PATH``; ``(path, url)``.

    Raises:
        ValueError: neither form; the message shows both.
    """
    if text.startswith("file:") and len(text) > len("file:"):
        return text[len("file:") :], ""
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None, text
    raise ValueError(f"--lineage-export {text!r}: expected file:PATH or http(s)://HOST[:PORT]/PATH")


def _dataset(namespace: str, data: LineageData) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "name": f"sha256:{data.sha256}",
        "facets": {"xpipe": {
            "_producer": PRODUCER, "_schemaURL": f"{PRODUCER}#/xpipe/DatasetFacet",
            "sizeBytes": data.size_bytes, "task": data.task, "runId": data.run_id, "artifactRef": data.artifact_ref,
        }},
    }  # fmt: skip


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="microseconds")


def write_openlineage(events: Sequence[dict[str, Any]], *, path: str | Path | None = None, url: str = "") -> int:
    """Append ``events`` as JSON lines to ``path``, or POST each to ``url``; returns how many.

    Only where the caller points: nothing is sent anywhere else.

    Raises:
        ValueError: neither or both of ``path`` and ``url``, or a URL that is not http(s).
        OSError: the file cannot be written, or the endpoint refused an event (the
            message names the URL, the status and how many events went before).
    """
    if (path is None) == (not url):
        raise ValueError("export_lineage takes exactly one of path= (JSON lines) or url= (an HTTP endpoint)")
    if path is not None:
        with open(path, "a", encoding="utf-8") as f:
            for event in events:
                f.write(json.dumps(event, separators=(",", ":")) + "\n")
        return len(events)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"lineage url {url!r}: expected http(s)://HOST[:PORT]/PATH")
    for sent, event in enumerate(events):
        request = urllib.request.Request(
            url, data=json.dumps(event).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as reply:
                reply.read()
        except urllib.error.HTTPError as exc:
            raise OSError(f"lineage endpoint {url} answered {exc.code} {exc.reason} to event {sent + 1} of "
                          f"{len(events)} ({sent} sent)") from None  # fmt: skip
        except (urllib.error.URLError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OSError(f"lineage endpoint {url} unreachable at event {sent + 1} of {len(events)} "
                          f"({sent} sent): {reason}") from None  # fmt: skip
    return len(events)


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of the audit log (see :meth:`xpipe.Client.get_audit`).

    Attributes:
        entries: Oldest first, each with its ``prev_hash`` and ``hash``.
        head_seq: The stored head's seq (the newest stored entry).
        head_hash: The stored head's hash; ``verify(..., expected_head=head_hash)`` catches a cut tail.
        more: More entries follow; pass ``after_seq=next_after_seq``.
        next_after_seq: Where the next page starts.
        dropped: Entries the coordinator could not keep since it started (its queue was full).
        queued: Entries recorded but not stored yet.
    """

    entries: tuple[AuditEntry, ...]
    head_seq: int
    head_hash: str
    more: bool
    next_after_seq: int
    dropped: int
    queued: int

    @classmethod
    def from_proto(cls, msg: Any) -> AuditPage:
        entries = tuple(
            AuditEntry(e.seq, e.at, e.principal, e.action, e.target, e.outcome, e.stimulus_id, dict(e.detail),
                       e.prev_hash, e.hash)
            for e in msg.entries
        )  # fmt: skip
        return cls(entries, msg.head_seq, msg.head_hash, msg.more, msg.next_after_seq, msg.dropped, msg.queued)


def iter_pages(fetch, **filters) -> Iterable[AuditPage]:
    """Every page ``fetch(after_seq=..., **filters)`` gives, from the start."""
    after = 0
    while True:
        page = fetch(after_seq=after, **filters)
        yield page
        if not page.more:
            return
        after = page.next_after_seq
