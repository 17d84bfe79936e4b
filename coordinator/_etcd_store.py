"""The etcd store: run and task state in etcd, so any coordinator of a cluster can take over.

Several coordinators share one etcd cluster; the elected leader (``_leader.py``) is the only
one that writes, and each of its write transactions carries a *fence*: a compare on the
leader key's ``create_revision``. A deposed leader (paused past its lease, cut off by a
partition) fails that compare, and its write changes nothing.

Keys, under ``/xpipe/<cluster>/``::

    leader                        the election key: value = leader's address, on its lease
    members/<address>             one per live coordinator, on its own lease
    runs/<run_id>                 the run header (a RunSummary)
    specs/<run_id>                the submitted PipelineSpec, written once
    tasks/<run_id>/<task name>    the task's latest record (a TaskInfo)
    active/<run_id>               present while the run is unfinished
    bytime/<created_at>/<run_id>  an index for newest-first listing
    audit/<seq, 20 digits>        one audit log entry (JSON), written by the leader only
    audit_head                    the newest entry's seq and hash (JSON), in the same transaction
    lineage/<run_id>/<task>       a tracked task's lineage node (a LineageNode)

Every value is ``b"z" + zstd(protobuf)``, or ``b"z" + seal(zstd(protobuf))`` with encryption
at rest (``--encryption-key-file``; sealed under the value's etcd key as associated data, see
``xpipe.security._atrest``); when the compressed bytes exceed
``inline_limit_bytes`` (64 KiB) they go to the artifact directory as a file named by their
sha256, and etcd holds ``b"a" + hexdigest`` only. In HA every coordinator must see the same
artifact directory (a shared volume).

A group commit becomes as few transactions as etcd allows: at most ``max_txn_ops`` (etcd's
``--max-txn-ops``, 128 by default) operations and ``max_txn_bytes`` per transaction (etcd's
request limit is 1.5 MiB). One commit split in several transactions is not atomic as a
whole; records are written in the order the engine produced them, and a new leader rebuilds
from whatever prefix was written (the state machine reconciles on restore).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import zstandard
from aetcd import rpc

from xpipe._backoff import Backoff
from xpipe.security._tls import TLSConfig
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2
from xpipe.security._atrest import AtRest, open_value

from xpipe.security._audit import GENESIS_HASH, AuditEntry

from ._events import RunRecord, TaskRecord, task_info
from ._task_checkpoints import EtcdTaskCheckpoints
from ._store import AuditPage, CheckpointKey, Store, StoredRun, _page, decode_history, encode_history

__all__ = ["EtcdStore", "EtcdStoreError", "EtcdUnavailableError", "Fence", "FencedError", "parse_etcd_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_FINISHED = (pb.RUN_SUCCEEDED, pb.RUN_FAILED, pb.RUN_CANCELLED)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect soon after an etcd restart, not after grpc's default backoff of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
# Per-operation protobuf overhead we budget for in a transaction (tags, lengths, RequestOp).
_OP_OVERHEAD_BYTES = 32


class EtcdStoreError(RuntimeError):
    """The etcd store could not do what was asked."""


class EtcdUnavailableError(EtcdStoreError):
    """etcd did not answer in time (down, partitioned, or overloaded)."""


class FencedError(EtcdStoreError):
    """A write was refused because this coordinator is no longer the leader."""


@dataclass(frozen=True, slots=True)
class Fence:
    """Writes succeed only while ``key`` exists with this ``create_revision`` (the leader's term)."""

    key: bytes
    create_revision: int


def deposed_fence(key: bytes) -> Fence:
    """A fence no write passes (no key has create_revision -1): set when a leader steps down."""
    return Fence(key, -1)


def parse_etcd_url(url: str) -> list[str]:
    """``etcd://host:port[,host:port...]`` -> ``["host:port", ...]``; names what is wrong."""
    if not url.startswith("etcd://"):
        raise ValueError(f"bad etcd store URL {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    endpoints = [e.strip() for e in url[len("etcd://") :].rstrip("/").split(",") if e.strip()]
    if not endpoints:
        raise ValueError(f"bad etcd store URL {url!r}: no endpoint given")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad etcd endpoint {endpoint!r} in {url!r}: expected HOST:PORT")
    return endpoints


def _prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range request cover every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(slots=True)
class _Stubs:
    kv: rpc.KVStub
    lease: rpc.LeaseStub
    watch: rpc.WatchStub


class EtcdStore(EtcdTaskCheckpoints, Store):
    """Run and task state in etcd; see the module docs for the layout and limits.

    Args:
        endpoints: ``host:port`` of etcd members; calls move to the next one when one fails.
        cluster: names this xpipe cluster; all keys live under ``/xpipe/<cluster>/``.
        artifact_dir: where values above ``inline_limit_bytes`` go (shared by all coordinators).
        call_timeout_s: deadline of one etcd call.
        retry_s: how long a store operation keeps retrying an unavailable etcd before it fails.
        inline_limit_bytes: compressed values above this go to the artifact directory.
        max_txn_ops: most operations in one transaction (etcd's ``--max-txn-ops``).
        max_txn_bytes: most bytes in one transaction (below etcd's 1.5 MiB request limit).
        crypt: seal every value (and the artifact files values spill to) with this keyring.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cluster: str,
        artifact_dir: str | Path,
        call_timeout_s: float = 5.0,
        retry_s: float = 2.0,
        inline_limit_bytes: int = 64 * 1024,
        max_txn_ops: int = 128,
        max_txn_bytes: int = 1_000_000,
        tls: TLSConfig | None = None,
        crypt: AtRest | None = None,
    ):
        if not endpoints:
            raise ValueError("EtcdStore needs at least one etcd endpoint")
        if not cluster or "/" in cluster or not cluster.isprintable():
            raise ValueError(f"bad cluster name {cluster!r}: use a non-empty name without '/'")
        if max_txn_ops < 4:
            raise ValueError(f"max_txn_ops must be at least 4, got {max_txn_ops}")
        if max_txn_bytes < 2 * inline_limit_bytes:
            raise ValueError("max_txn_bytes must hold at least two inline values")
        self.endpoints = list(endpoints)
        self.cluster = cluster
        self.artifact_dir = Path(artifact_dir)
        self.call_timeout_s = call_timeout_s
        self.retry_s = retry_s
        self.inline_limit_bytes = inline_limit_bytes
        self.max_txn_ops = max_txn_ops
        self.max_txn_bytes = max_txn_bytes
        #: ``--etcd-ca/--etcd-cert/--etcd-key``: TLS (and a client certificate) to etcd; None: plaintext.
        self.tls = tls
        self.crypt = crypt
        self.prefix = f"/xpipe/{cluster}/".encode()
        self.leader_key = self.prefix + b"leader"
        self.members_prefix = self.prefix + b"members/"
        #: Set by the leader election; None writes unfenced (a single coordinator, tests).
        self.fence: Fence | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._stubs_list: list[_Stubs] = []
        self._current = 0
        self._zc = zstandard.ZstdCompressor(level=3)
        self._zd = zstandard.ZstdDecompressor()
        #: Write transactions committed and operations (puts and deletes) in them.
        self.txns = 0
        self.ops = 0
        self.artifacts_written = 0

    @classmethod
    def from_url(cls, url: str, *, cluster: str, artifact_dir: str | Path, **options) -> EtcdStore:
        return cls(parse_etcd_url(url), cluster=cluster, artifact_dir=artifact_dir, **options)

    # ------------------------------------------------------------------ connection

    async def open(self) -> None:
        """Create the channels; etcd is contacted lazily, so a coordinator starts while etcd is down."""
        if self._channels:
            return
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        for endpoint in self.endpoints:
            if self.tls is None:
                channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            else:
                options = [*_CHANNEL_OPTIONS, *self.tls.channel_options()]
                channel = grpc.aio.secure_channel(endpoint, self.tls.channel_credentials(), options=options)
            self._channels.append(channel)
            self._stubs_list.append(_Stubs(rpc.KVStub(channel), rpc.LeaseStub(channel), rpc.WatchStub(channel)))

    async def close(self) -> None:
        channels, self._channels, self._stubs_list = self._channels, [], []
        for channel in channels:
            await channel.close()
        if channels:
            log.info("etcd store closed: %d txns, %d ops, %d artifacts written", self.txns, self.ops,
                     self.artifacts_written)  # fmt: skip

    @property
    def endpoint(self) -> str:
        """The etcd endpoint in use."""
        return self.endpoints[self._current]

    def stubs(self) -> _Stubs:
        if not self._stubs_list:
            raise EtcdStoreError("etcd store is not open")
        return self._stubs_list[self._current]

    async def call(
        self, fn: Callable[[_Stubs], Awaitable[T]], *, what: str, retry_s: float | None = None
    ) -> T:
        """Run one etcd call, moving to the next endpoint and retrying while etcd is unavailable.

        Raises:
            EtcdUnavailableError: no endpoint answered within ``retry_s``.
            EtcdStoreError: etcd refused the request (a bug or a misconfiguration).
        """
        deadline = time.monotonic() + (self.retry_s if retry_s is None else retry_s)
        backoff = Backoff(initial_s=0.05, max_s=0.5)
        delay = backoff.next_delay()
        while True:
            stubs = self.stubs()
            try:
                return await fn(stubs)
            except grpc.aio.AioRpcError as exc:
                where = self.endpoint
                if exc.code() not in _RETRYABLE:
                    raise EtcdStoreError(f"etcd {what} failed at {where}: {exc.code().name}: {exc.details()}") from exc
                if time.monotonic() + delay >= deadline:
                    raise EtcdUnavailableError(
                        f"etcd {what} failed: no answer from {','.join(self.endpoints)} "
                        f"({exc.code().name}: {exc.details()})"
                    ) from exc
                log.debug("etcd %s at %s: %s; retrying", what, where, exc.code().name)
            if len(self.endpoints) > 1:
                self._current = (self._current + 1) % len(self.endpoints)
            await asyncio.sleep(delay)
            delay = backoff.next_delay()

    async def _txn(self, request: rpc.TxnRequest, what: str) -> rpc.TxnResponse:
        return await self.call(lambda s: s.kv.Txn(request, timeout=self.call_timeout_s), what=what)

    async def _range(self, request: rpc.RangeRequest, what: str) -> rpc.RangeResponse:
        return await self.call(lambda s: s.kv.Range(request, timeout=self.call_timeout_s), what=what)

    # ------------------------------------------------------------------ values

    def _pack(self, data: bytes, aad: bytes = b"") -> bytes:
        """A value as etcd keeps it; ``aad`` (its key) binds a sealed value to its place."""
        compressed = self._zc.compress(data)
        if self.crypt is not None:
            compressed = self.crypt.seal(compressed, aad)
        if len(compressed) <= self.inline_limit_bytes:
            return b"z" + compressed
        digest = hashlib.sha256(compressed).hexdigest()
        path = self._artifact_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(compressed)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            self.artifacts_written += 1
        return b"a" + digest.encode()

    def _unpack(self, value: bytes, what: str, aad: bytes = b"") -> bytes:
        kind, body = value[:1], value[1:]
        if kind == b"z":
            return self._zd.decompress(open_value(self.crypt, body, aad, what))
        if kind == b"a":
            path = self._artifact_path(body.decode())
            try:
                return self._zd.decompress(open_value(self.crypt, path.read_bytes(), aad, what))
            except FileNotFoundError:
                raise EtcdStoreError(
                    f"{what} lives in artifact {path}, which is missing: do all coordinators share "
                    f"--artifact-dir {self.artifact_dir}?"
                ) from None
        raise EtcdStoreError(f"{what} has an unknown value encoding {kind!r}")

    def _artifact_path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise EtcdStoreError(f"bad artifact reference {digest!r}")
        return self.artifact_dir / digest[:2] / digest

    # ------------------------------------------------------------------ keys

    def _run_key(self, run_id: str) -> bytes:
        return self.prefix + b"runs/" + run_id.encode()

    def _spec_key(self, run_id: str) -> bytes:
        return self.prefix + b"specs/" + run_id.encode()

    def _tasks_prefix(self, run_id: str) -> bytes:
        return self.prefix + b"tasks/" + run_id.encode() + b"/"

    def _story_prefix(self, run_id: str) -> bytes:
        return self.prefix + b"story/" + run_id.encode() + b"/"

    def _active_key(self, run_id: str) -> bytes:
        return self.prefix + b"active/" + run_id.encode()

    def _bytime_key(self, rec: RunRecord) -> bytes:
        return self.prefix + f"bytime/{rec.created_at:020.6f}/{rec.run_id}".encode()

    # ------------------------------------------------------------------ writes

    def _ops(self, records: Sequence[RunRecord | TaskRecord]) -> dict[bytes, bytes | None]:
        """Key -> packed value (None: delete), later records winning, in first-seen order."""
        ops: dict[bytes, bytes | None] = {}
        for rec in records:
            if "/" in rec.run_id:
                raise EtcdStoreError(f"run id {rec.run_id!r} contains '/'")
            if isinstance(rec, TaskRecord):
                info = task_info(rec, include_result=True)
                key = self._tasks_prefix(rec.run_id) + rec.name.encode()
                ops[key] = self._pack(info.SerializeToString(), key)
                if rec.history:  # only tasks with a failed or requeued attempt (see _store.encode_history)
                    key = self._story_prefix(rec.run_id) + rec.name.encode()
                    ops[key] = self._pack(encode_history(rec.history), key)
                continue
            header = pipeline_pb2.RunSummary(
                run_id=rec.run_id, pipeline=rec.name, state=rec.state, created_at=rec.created_at,
                finished_at=rec.finished_at, total_tasks=rec.total,
            )  # fmt: skip
            if rec.spec is not None:
                key = self._spec_key(rec.run_id)
                ops[key] = self._pack(rec.spec.SerializeToString(), key)
                ops[self._bytime_key(rec)] = b""
            key = self._run_key(rec.run_id)
            ops[key] = self._pack(header.SerializeToString(), key)
            ops[self._active_key(rec.run_id)] = None if rec.state in _FINISHED else b""
        return ops

    def _chunks(self, ops: dict[bytes, bytes | None]) -> list[list[rpc.RequestOp]]:
        """Split operations into transactions within etcd's op-count and size limits."""
        chunks: list[list[rpc.RequestOp]] = []
        current: list[rpc.RequestOp] = []
        size = 0
        # The fence compare takes one slot of the compare list, not of the op list.
        for key, value in ops.items():
            op_size = len(key) + (len(value) if value is not None else 0) + _OP_OVERHEAD_BYTES
            if current and (len(current) >= self.max_txn_ops or size + op_size > self.max_txn_bytes):
                chunks.append(current)
                current, size = [], 0
            if value is None:
                current.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
            else:
                current.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value)))
            size += op_size
        if current:
            chunks.append(current)
        return chunks

    def _fence_compares(self) -> list[rpc.Compare]:
        fence = self.fence
        if fence is None:
            return []
        return [
            rpc.Compare(
                key=fence.key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                create_revision=fence.create_revision,
            )
        ]  # fmt: skip

    async def commit(self, records: Sequence[RunRecord | TaskRecord]) -> None:
        """Write records in fenced transactions of at most ``max_txn_ops`` / ``max_txn_bytes``.

        Raises:
            FencedError: this coordinator is no longer the leader; nothing of that transaction
                was written.
            EtcdUnavailableError: etcd did not answer within ``retry_s``.
        """
        if not records:
            return
        ops = self._ops(records)
        for chunk in self._chunks(ops):
            fence = self.fence
            request = rpc.TxnRequest(compare=self._fence_compares(), success=chunk)
            response = await self._txn(request, "commit")
            if not response.succeeded:
                assert fence is not None
                raise FencedError(
                    f"write refused: this coordinator is no longer the leader of cluster {self.cluster!r} "
                    f"(leader key {fence.key.decode()} no longer has create_revision {fence.create_revision})"
                )
            self.txns += 1
            self.ops += len(chunk)

    # ------------------------------------------------------------------ reads

    async def get_run(self, run_id: str, *, with_results: bool = False) -> StoredRun | None:
        prefix = self._tasks_prefix(run_id)
        story_prefix = self._story_prefix(run_id)
        request = rpc.TxnRequest(
            success=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=self._run_key(run_id))),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=self._spec_key(run_id))),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix))),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=story_prefix, range_end=_prefix_end(story_prefix))),
            ]
        )
        response = await self._txn(request, f"read of run {run_id}")
        header_kvs, spec_kvs, task_kvs, story_kvs = (r.response_range.kvs for r in response.responses)
        histories = {
            kv.key[len(story_prefix) :].decode(): self._unpack(
                kv.value, f"story of {run_id}/{kv.key[len(story_prefix):]!r}", kv.key
            )
            for kv in story_kvs
        }
        if not header_kvs:
            return None
        summary = pipeline_pb2.RunSummary.FromString(
            self._unpack(header_kvs[0].value, f"run {run_id} header", header_kvs[0].key)
        )
        header = RunRecord(
            summary.run_id, summary.pipeline, summary.state, summary.created_at, summary.finished_at, summary.total_tasks
        )
        spec = None
        if spec_kvs:
            spec = pb.PipelineSpec.FromString(self._unpack(spec_kvs[0].value, f"run {run_id} spec", spec_kvs[0].key))
        tasks: dict[str, TaskRecord] = {}
        for kv in task_kvs:
            name = kv.key[len(prefix) :].decode()
            info = pipeline_pb2.TaskInfo.FromString(self._unpack(kv.value, f"task {run_id}/{name}", kv.key))
            tasks[name] = TaskRecord(
                run_id, name, info.state, info.attempts, info.worker, info.started_at, info.finished_at,
                info.error if info.HasField("error") else None,
                info.result if with_results and info.HasField("result") else None,
                history=decode_history(run_id, name, histories.get(name)),
                telemetry=info.telemetry if info.HasField("telemetry") else None, cache_hit=info.cache_hit,
            )  # fmt: skip
        return StoredRun(header, spec, tasks)

    async def load_unfinished(self) -> list[StoredRun]:
        prefix = self.prefix + b"active/"
        response = await self._range(
            rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix), keys_only=True), "read of active runs"
        )
        run_ids = [kv.key[len(prefix) :].decode() for kv in response.kvs]
        runs = await asyncio.gather(*(self.get_run(run_id, with_results=True) for run_id in run_ids))
        out = [run for run in runs if run is not None]
        out.sort(key=lambda run: run.header.created_at)
        return out

    async def list_runs(self, limit: int) -> list[RunRecord]:
        if limit <= 0:
            return []
        prefix = self.prefix + b"bytime/"
        index = await self._range(
            rpc.RangeRequest(
                key=prefix, range_end=_prefix_end(prefix), limit=limit, keys_only=True,
                sort_order=rpc.RangeRequest.DESCEND, sort_target=rpc.RangeRequest.KEY,
            ),
            "run listing",
        )  # fmt: skip
        run_ids = [kv.key.rsplit(b"/", 1)[1].decode() for kv in index.kvs]
        out: list[RunRecord] = []
        for start in range(0, len(run_ids), self.max_txn_ops):
            batch = run_ids[start : start + self.max_txn_ops]
            request = rpc.TxnRequest(
                success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=self._run_key(r))) for r in batch]
            )
            response = await self._txn(request, "run listing")
            for run_id, reply in zip(batch, response.responses):
                kvs = reply.response_range.kvs
                if not kvs:
                    continue
                s = pipeline_pb2.RunSummary.FromString(self._unpack(kvs[0].value, f"run {run_id} header", kvs[0].key))
                out.append(RunRecord(s.run_id, s.pipeline, s.state, s.created_at, s.finished_at, s.total_tasks))
        return out

    # ------------------------------------------------------------------ governance (retention, forgetting)
    # Rare and off the hot path: whole-prefix scans in pages, writes fenced like every other.

    async def _scan(self, prefix: bytes, *, keys_only: bool = False, start: bytes = b"", page: int = 256):
        """Every key-value under ``prefix`` (from ``start``), in key order, a page at a time."""
        key = start or prefix
        end = _prefix_end(prefix)
        while True:
            response = await self._range(
                rpc.RangeRequest(key=key, range_end=end, limit=page, keys_only=keys_only), "governance scan"
            )
            for kv in response.kvs:
                yield kv
            if not response.more or not response.kvs:
                return
            key = response.kvs[-1].key + b"\0"

    async def finished_runs_before(self, before: float) -> list[tuple[RunRecord, str]]:
        """Finished runs that finished before ``before`` (unix s), with their namespace, oldest first."""
        out: list[tuple[RunRecord, str]] = []
        async for kv in self._scan(self.prefix + b"runs/"):
            s = pipeline_pb2.RunSummary.FromString(self._unpack(kv.value, "run header", kv.key))
            if s.state in _FINISHED and s.finished_at < before:
                rec = RunRecord(s.run_id, s.pipeline, s.state, s.created_at, s.finished_at, s.total_tasks)
                spec = await self._range(rpc.RangeRequest(key=self._spec_key(s.run_id)), f"spec of {s.run_id}")
                namespace = (
                    pb.PipelineSpec.FromString(self._unpack(spec.kvs[0].value, f"run {s.run_id} spec", spec.kvs[0].key)).namespace
                    if spec.kvs else ""
                )  # fmt: skip
                out.append((rec, namespace))
        out.sort(key=lambda item: item[0].finished_at)
        return out

    async def run_ids(self) -> set[str]:
        """The id of every stored run."""
        prefix = self.prefix + b"runs/"
        return {kv.key[len(prefix) :].decode() async for kv in self._scan(prefix, keys_only=True)}

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete finished runs (one fenced transaction each) and the value files only they named.

        A run whose ``active/`` key exists (unfinished) is left alone: the transaction
        compares that key's absence.
        """
        deleted = 0
        for run_id in run_ids:
            header = await self._range(rpc.RangeRequest(key=self._run_key(run_id)), f"run {run_id} header")
            if not header.kvs:
                continue
            s = pipeline_pb2.RunSummary.FromString(
                self._unpack(header.kvs[0].value, f"run {run_id} header", header.kvs[0].key)
            )
            if s.state not in _FINISHED:
                continue
            digests = {kv.value[1:].decode() for kv in header.kvs if kv.value[:1] == b"a"}
            spec_digests: set[str] = set()
            runs_keys = (self._tasks_prefix(run_id), self._story_prefix(run_id), self._task_checkpoints_prefix(run_id))
            for prefix in runs_keys:
                digests |= {kv.value[1:].decode() async for kv in self._scan(prefix) if kv.value[:1] == b"a"}
            spec = await self._range(rpc.RangeRequest(key=self._spec_key(run_id)), f"run {run_id} spec")
            spec_digests = {kv.value[1:].decode() for kv in spec.kvs if kv.value[:1] == b"a"}
            rec = RunRecord(s.run_id, s.pipeline, s.state, s.created_at, s.finished_at, s.total_tasks)
            ops = [
                rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                for key in (self._run_key(run_id), self._spec_key(run_id), self._bytime_key(rec))
            ] + [
                rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=prefix, range_end=_prefix_end(prefix)))
                for prefix in runs_keys
            ]
            unfinished = rpc.Compare(
                key=self._active_key(run_id), target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
            )
            response = await self._txn(
                rpc.TxnRequest(compare=[*self._fence_compares(), unfinished], success=ops), f"delete of run {run_id}"
            )
            if not response.succeeded:
                continue  # deposed, or the run is unfinished after all: nothing was deleted
            deleted += 1
            if spec_digests:  # the same spec submitted twice is one file: keep it while another names it
                async for kv in self._scan(self.prefix + b"specs/"):
                    spec_digests.discard(kv.value[1:].decode())
            for digest in digests | spec_digests:
                self._artifact_path(digest).unlink(missing_ok=True)
        return deleted

    async def finished_results(
        self, after: tuple[str, str] = ("", ""), limit: int = 500
    ) -> list[tuple[str, str, pb.Payload]]:
        """A page of ``(run_id, task, result)`` of finished runs, in key order after ``after``."""
        prefix = self.prefix + b"tasks/"
        start = prefix + f"{after[0]}/{after[1]}".encode() + b"\0" if after[0] else b""
        active_prefix = self.prefix + b"active/"
        active = {kv.key[len(active_prefix) :].decode() async for kv in self._scan(active_prefix, keys_only=True)}
        out: list[tuple[str, str, pb.Payload]] = []
        async for kv in self._scan(prefix, start=start):
            run_id, _, name = kv.key[len(prefix) :].decode().partition("/")
            if run_id in active:
                continue
            info = pipeline_pb2.TaskInfo.FromString(self._unpack(kv.value, f"task {run_id}/{name}", kv.key))
            if info.HasField("result"):
                out.append((run_id, name, info.result))
                if len(out) >= limit:
                    break
        return out

    async def replace_results(self, changes: Sequence[tuple[str, str, pb.Payload | None]]) -> None:
        """Rewrite stored results (None deletes one), fenced, one transaction per chunk."""
        ops: dict[bytes, bytes | None] = {}
        stale: list[str] = []
        for run_id, name, payload in changes:
            key = self._tasks_prefix(run_id) + name.encode()
            current = await self._range(rpc.RangeRequest(key=key), f"task {run_id}/{name}")
            if not current.kvs:
                continue
            value = current.kvs[0].value
            if value[:1] == b"a":  # the old value's file holds what is being erased: it goes too
                stale.append(value[1:].decode())
            info = pipeline_pb2.TaskInfo.FromString(self._unpack(value, f"task {run_id}/{name}", key))
            if payload is None:
                info.ClearField("result")
            else:
                info.result.CopyFrom(payload)
            ops[key] = self._pack(info.SerializeToString(), key)
        for chunk in self._chunks(ops):
            request = rpc.TxnRequest(compare=self._fence_compares(), success=chunk)
            if not (await self._txn(request, "result rewrite")).succeeded:
                raise FencedError(
                    f"result rewrite refused: this coordinator is no longer the leader of cluster {self.cluster!r}"
                )
        for digest in stale:  # a task's record holds its own times: its file is its alone
            self._artifact_path(digest).unlink(missing_ok=True)

    async def finished_specs(self, after: str = "", limit: int = 100) -> list[tuple[str, pb.PipelineSpec]]:
        """A page of ``(run_id, spec)`` of finished runs, in run id order after ``after``."""
        prefix = self.prefix + b"specs/"
        active_prefix = self.prefix + b"active/"
        active = {kv.key[len(active_prefix) :].decode() async for kv in self._scan(active_prefix, keys_only=True)}
        out: list[tuple[str, pb.PipelineSpec]] = []
        async for kv in self._scan(prefix, start=prefix + after.encode() + b"\0" if after else b""):
            run_id = kv.key[len(prefix) :].decode()
            if run_id not in active:
                out.append((run_id, pb.PipelineSpec.FromString(self._unpack(kv.value, f"run {run_id} spec", kv.key))))
                if len(out) >= limit:
                    break
        return out
    # ------------------------------------------------------------------ audit log and lineage

    def _audit_key(self, seq: int) -> bytes:
        return self.prefix + f"audit/{seq:020d}".encode()

    async def audit_head(self) -> tuple[int, str]:
        response = await self._range(rpc.RangeRequest(key=self.prefix + b"audit_head"), "read of the audit head")
        if not response.kvs:
            return 0, GENESIS_HASH
        head = json.loads(response.kvs[0].value)
        return int(head["seq"]), str(head["hash"])

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Entries and the new head in one fenced transaction: only the leader appends.

        Raises:
            FencedError: this coordinator no longer leads; nothing was written.
        """
        if not entries:
            return
        if len(entries) + 1 > self.max_txn_ops:
            raise EtcdStoreError(f"{len(entries)} audit entries do not fit one transaction (max_txn_ops {self.max_txn_ops})")
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(
                key=self._audit_key(e.seq), value=json.dumps(e.to_json(), sort_keys=True).encode()
            ))
            for e in entries
        ]  # fmt: skip
        head = json.dumps({"seq": entries[-1].seq, "hash": entries[-1].hash}).encode()
        ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=self.prefix + b"audit_head", value=head)))
        response = await self._txn(rpc.TxnRequest(compare=self._fence_compares(), success=ops), "audit append")
        if not response.succeeded:
            raise FencedError(f"audit append refused: this coordinator no longer leads cluster {self.cluster!r}")

    async def read_audit(self, *, after_seq: int = 0, since: float = 0.0, principal: str = "", limit: int = 1000) -> AuditPage:
        """A page of entries; with filters, the log is scanned in chunks of at most ``limit + 1`` keys."""
        prefix = self.prefix + b"audit/"
        head_seq, head_hash, revision = 0, GENESIS_HASH, 0
        matched: list[AuditEntry] = []
        cursor = after_seq
        while True:
            # Every chunk at the first chunk's revision, so the page and the head agree.
            head_range = rpc.RangeRequest(key=self.prefix + b"audit_head", revision=revision)
            entry_range = rpc.RangeRequest(key=self._audit_key(cursor + 1), range_end=_prefix_end(prefix),
                                           limit=limit + 1, revision=revision)  # fmt: skip
            response = await self._txn(
                rpc.TxnRequest(success=[rpc.RequestOp(request_range=head_range), rpc.RequestOp(request_range=entry_range)]),
                "audit read",
            )
            revision = revision or response.header.revision
            head_kvs, entry_kvs = (r.response_range.kvs for r in response.responses)
            if head_kvs:
                head = json.loads(head_kvs[0].value)
                head_seq, head_hash = int(head["seq"]), str(head["hash"])
            chunk = [AuditEntry.from_json(json.loads(kv.value)) for kv in entry_kvs]
            page = _page(chunk, since, principal, limit - len(matched), head_seq, head_hash, cursor)
            matched.extend(page.entries)
            if page.more or len(chunk) <= limit:  # the page is full, or the log ends in this chunk
                more = page.more or (len(matched) >= limit and len(chunk) > limit)
                return AuditPage(matched, head_seq, head_hash, more, page.next_after_seq if chunk else cursor)
            cursor = chunk[-1].seq
            if len(matched) >= limit:  # full exactly at a chunk's end: the next page may be empty
                return AuditPage(matched, head_seq, head_hash, True, cursor)

    async def put_lineage(self, nodes: Sequence[tuple[str, str, bytes]]) -> None:
        if not nodes:
            return
        ops = {self.prefix + f"lineage/{run_id}/{task}".encode(): self._pack(node) for run_id, task, node in nodes}
        for chunk in self._chunks(ops):
            response = await self._txn(rpc.TxnRequest(compare=self._fence_compares(), success=chunk), "lineage write")
            if not response.succeeded:
                raise FencedError(f"lineage write refused: this coordinator no longer leads cluster {self.cluster!r}")

    async def get_lineage(self, run_id: str) -> list[bytes]:
        prefix = self.prefix + f"lineage/{run_id}/".encode()
        response = await self._range(rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix)), f"lineage of {run_id}")
        return [self._unpack(kv.value, f"lineage of {run_id}") for kv in response.kvs]

    # ------------------------------------------------------------------ stream checkpoints

    def _checkpoint_key(self, key: CheckpointKey) -> bytes:
        stream, stage, instance = key
        return self.prefix + b"checkpoints/" + json.dumps([stream, stage, instance]).encode()

    async def put_checkpoint(self, key: CheckpointKey, seq: int, data: bytes) -> bool:
        """Write unless the stored seq is >= ``seq``; fenced, and compared on the key's revision
        so two writers cannot both pass the seq check. The value is ``<seq>:`` then the packed bytes.

        Raises:
            FencedError: this coordinator no longer leads; nothing was written.
        """
        etcd_key = self._checkpoint_key(key)
        what = f"checkpoint of {key[0]}/{key[1]}[{key[2]}]"
        found = await self._range(rpc.RangeRequest(key=etcd_key), what)
        mod_revision = 0
        if found.kvs:
            stored_seq = int(found.kvs[0].value.split(b":", 1)[0])
            if stored_seq >= seq:
                return False
            mod_revision = found.kvs[0].mod_revision
        unchanged = rpc.Compare(key=etcd_key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=etcd_key, value=f"{seq}:".encode() + self._pack(data, etcd_key)))
        fence = self.fence
        # On failure, read the leader key back: a lost fence is an error, a lost race is not.
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=fence.key))] if fence is not None else []
        request = rpc.TxnRequest(compare=[*self._fence_compares(), unchanged], success=[put], failure=failure)
        response = await self._txn(request, what)
        if not response.succeeded:
            if fence is not None:
                leader = response.responses[0].response_range.kvs
                if not leader or leader[0].create_revision != fence.create_revision:
                    raise FencedError(f"{what} refused: this coordinator no longer leads cluster {self.cluster!r}")
            return False  # another save of this instance won the race: the newer one stays
        return True

    async def get_checkpoint(self, key: CheckpointKey) -> bytes | None:
        etcd_key = self._checkpoint_key(key)
        what = f"checkpoint of {key[0]}/{key[1]}[{key[2]}]"
        found = await self._range(rpc.RangeRequest(key=etcd_key), what)
        if not found.kvs:
            return None
        return self._unpack(found.kvs[0].value.split(b":", 1)[1], what, etcd_key)
