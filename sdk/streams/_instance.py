"""One stage instance: the long-lived task that reads, buffers, processes, writes and commits.

``StreamPipeline.start()`` submits one task per instance whose code is :func:`run_instance`.
A worker runs it like any Python task, in one of its executor processes, for as long as the
stream runs. Inside, three asyncio loops share one :class:`~xpipe.streams.BoundedBuffer`:

- the **fetcher** reads the partitions this instance owns, decodes each record (a malformed
  one goes to ``<stage>.dlq``), keeps only this instance's keys when it must filter, waits on
  the token bucket at a source stage, and puts records in the buffer (``block`` waits for
  room, so the broker's lag grows; ``drop_oldest`` / ``drop_newest`` drop and count);
- the **processor** takes batches in order, runs ``process_batch`` in a thread (so fetching
  goes on while the task works), retries a failing batch, then isolates the records that
  fail for good into ``<stage>.dlq``; with windows it feeds the :class:`Windower` and runs
  the task once per fired window; it writes the outputs to every downstream sink and waits
  for their acknowledgements;
- the **committer** commits, per partition, what every record up to the processor's position
  became (written and acknowledged, dropped, filtered or dead-lettered). A stage that holds
  state (``self.state`` or open windows) first saves a checkpoint with the coordinator, so
  the commit never runs ahead of the saved state.

Delivery is therefore at-least-once: a crash loses nothing; records fetched after the last
commit are read again by the restarted instance (counted as ``redelivered`` when its
previous attempt's checkpoint shows it had read them).

A fourth loop **reports** to the coordinator every :data:`REPORT_INTERVAL_S` and obeys its
answer: drain, stop, a newer attempt (fenced), or the number of active instances under
auto-scaling (an instance beyond it parks: it commits, leaves its partitions, and waits).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataStreamError
from ._buffer import BoundedBuffer
from ._connectors import Message, OutRecord, Sink, Source, connector_for, internal_uri
from ._labels import CHECKPOINT_INTERVAL_S, REPORT_INTERVAL_S
from ._plan import StagePlan, StreamPlan
from ._ratelimit import TokenBucket
from ._records import RecordError, decode_record, encode_record, partition_of, record_key
from ._uri import StreamURI
from ._windows import Windower

__all__ = ["InstanceOptions", "StageInstance", "run_instance", "stage_topology"]

log = logging.getLogger(__name__)

#: Most records the fetcher asks for at once, and the most in one process_batch call.
MAX_FETCH_RECORDS = 500
MAX_BATCH_RECORDS = 500
#: How long one fetch waits for records when there are none.
FETCH_WAIT_S = 0.2
#: How often a stateless instance commits what it has written.
COMMIT_INTERVAL_S = 0.1
#: process_batch is tried this many times before its records are isolated for the dead-letter stream.
PROCESS_ATTEMPTS = 3
PROCESS_BACKOFF_S = (0.05, 0.2)
#: A write downstream that fails is tried again after these delays, then the instance fails
#: (and the scheduler restarts it: nothing was committed past the failed write).
WRITE_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
#: How often a processing-time window stage looks for windows to fire when no record comes.
WINDOW_TICK_S = 0.1


@dataclass(frozen=True, slots=True)
class InstanceOptions:
    """What ``start()`` chose for every instance of a pipeline."""

    backpressure: str = "block"
    max_throughput_per_second: float | None = None
    auto_scaling: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"backpressure": self.backpressure, "rate": self.max_throughput_per_second, "auto_scaling": self.auto_scaling}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceOptions:
        return cls(data.get("backpressure", "block"), data.get("rate"), bool(data.get("auto_scaling", False)))


@dataclass(frozen=True, slots=True)
class Topology:
    """Where one stage reads and writes, derived from the plan (the same in every process)."""

    input_uri: StreamURI
    input_codec: str
    from_source: bool  # reads a user's source (rate limit applies, maybe key filtering)
    outputs: tuple[StreamURI, ...]  # internal stream (if a stage reads this one) and user sinks
    internal_partitions: int  # partitions of this stage's internal output (0: none)
    late_uri: StreamURI
    dlq_uri: StreamURI


def _first_source(plan: StreamPlan) -> StreamURI:
    if not plan.sources:
        raise DataStreamError(f"stream pipeline {plan.name!r} has no source")
    return plan.sources[0].uri


def readers_of(plan: StreamPlan, stream: str) -> list[StagePlan]:
    """The stages that read ``stream``."""
    return [s for s in plan.stages if s.input == stream]


def stage_topology(plan: StreamPlan, stage: StagePlan) -> Topology:
    """Where ``stage`` reads and writes."""
    first = _first_source(plan)
    source = next((s for s in plan.sources if s.stream == stage.input), None)
    if source is not None:
        input_uri, codec, from_source = source.uri, source.codec, True
    else:
        input_uri, codec, from_source = internal_uri(first, plan.name, stage.input), stage.codec, False
    readers = readers_of(plan, stage.name)
    outputs = [internal_uri(first, plan.name, stage.name)] if readers else []
    outputs += [sink.uri for sink in plan.sinks if sink.stream == stage.name]
    return Topology(
        input_uri, codec, from_source, tuple(outputs), max((r.parallelism for r in readers), default=0),
        internal_uri(first, plan.name, stage.late_stream), internal_uri(first, plan.name, stage.dlq_stream),
    )  # fmt: skip


def _key_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(slots=True)
class Counters:
    records_in: int = 0
    records_out: int = 0
    errors: int = 0
    dead_lettered: int = 0
    late: int = 0
    redelivered: int = 0
    batches: int = 0
    last_error: str = ""
    latencies: list[tuple[float, int]] = field(default_factory=list)  # (seconds, records) since the last report


def _percentile(samples: list[tuple[float, int]], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    total = sum(n for _, n in ordered)
    rank, seen = q * total, 0
    for latency, n in ordered:
        seen += n
        if seen >= rank:
            return latency
    return ordered[-1][0]


class _Output:
    """One downstream stream: its sink and how records are spread over its partitions."""

    __slots__ = ("partitions", "sink", "spread", "uri")

    def __init__(self, uri: StreamURI, sink: Sink, partitions: int):
        self.uri, self.sink, self.partitions, self.spread = uri, sink, partitions, 0

    def record(self, value: bytes, key: bytes | None, key_value: Any) -> OutRecord:
        """The record to write; ``partitions`` 0 leaves the partition to the connector."""
        if self.partitions <= 1:
            return OutRecord(value, key, 0 if self.partitions == 1 else None)
        if key_value is None:  # unkeyed: round robin, so instances downstream share the load
            self.spread = (self.spread + 1) % self.partitions
            return OutRecord(value, None, self.spread)
        return OutRecord(value, key, partition_of(key_value, self.partitions))


class StageInstance:
    """The runtime of one instance; :meth:`run` returns its final counters."""

    def __init__(
        self,
        plan: StreamPlan,
        stage: str,
        instance: int,
        options: InstanceOptions,
        *,
        control: Any = None,
        ref: dict[str, Any] | None = None,
    ) -> None:
        found = next((s for s in plan.stages if s.name == stage), None)
        if found is None:
            raise DataStreamError(f"stream pipeline {plan.name!r} has no stage {stage!r}")
        if not 0 <= instance < found.parallelism:
            raise DataStreamError(f"stage {stage!r}: instance {instance} is not in 0..{found.parallelism - 1}")
        self.plan, self.stage, self.index, self.options = plan, found, instance, options
        self.topology = stage_topology(plan, found)
        self.control = control  # a _control.Control, or None (no coordinator: tests of the loop)
        self.ref = ref or {}
        self.task = found.load_task()
        self.key = found.key_fn.load() if found.key_fn is not None else found.key_field
        source = next((s for s in plan.sources if s.stream == found.input), None)
        self.input_key = (source.key_fn.load() if source.key_fn else source.key_field) if source else self.key
        self.counters = Counters()
        self.buffer = BoundedBuffer(found.buffer_size, options.backpressure)
        self.windower = Windower(found.window) if found.window is not None else None
        self.state_name = "starting"
        self.active = found.parallelism
        self.stopping = ""  # "", "drain" or "stop"
        self.fenced = False
        self.partitions: list[int] = []
        self._fetched: deque[tuple[int, Message]] = deque()  # (index, message) in fetch order, not yet committed
        self._next_index = 0
        self._batch_first: int | None = None  # index of the first record of the batch being processed
        self._fetch_current: int | None = None  # index of the record the fetcher is handling across an await
        self._fetched_seq: dict[int, int] = {}  # partition -> highest seq fetched by this attempt
        self._previous_seq: dict[int, int] = {}  # partition -> highest seq an earlier attempt had read
        self._checkpoint_seq = 0
        self._saved_state: bytes | None = None
        self._outputs: list[_Output] = []
        self._late: _Output | None = None
        self._dlq: _Output | None = None
        self._source: Source | None = None
        self._lag: int | None = None
        self._changed = asyncio.Event()  # control asked for a drain, stop or new assignment
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"xpipe-stream-{stage}")
        self._bucket: TokenBucket | None = None
        self._source_label = f"{found.input} ({self.topology.input_uri})"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> dict[str, Any]:
        """Run until drained, stopped or fenced; return the final counters.

        Raises:
            DataStreamError: a broker cannot be reached, or a write downstream kept failing;
                nothing was committed past what was written, so a restart loses nothing.
        """
        reporter = asyncio.create_task(self._report_loop(), name="xpipe-stream-report")
        try:
            await self._restore()
            await self._open_outputs()
            while not self.stopping and not self.fenced:
                if self.index >= self.active:
                    self.state_name, self.partitions = "paused", []
                    await self._wait_changed()
                    continue
                await self._session()
            self.state_name = "stopped"
            return self.summary()
        except BaseException:
            self.state_name = "failed"
            raise
        finally:
            with contextlib.suppress(Exception):
                await self._report_once()
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reporter
            await self._close_outputs()
            self._thread.shutdown(wait=False, cancel_futures=True)

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {
            "stage": self.stage.name, "instance": self.index, "state": self.state_name, "records_in": c.records_in,
            "records_out": c.records_out, "dropped": self.buffer.dropped, "errors": c.errors,
            "dead_lettered": c.dead_lettered, "late": c.late, "redelivered": c.redelivered, "batches": c.batches,
        }  # fmt: skip

    async def _wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _owned(self, partitions: int) -> tuple[list[int] | None, bool]:
        """(partitions to read or None for all, whether to filter by key)."""
        active = max(1, min(self.active, self.stage.parallelism))
        if partitions >= active:
            return [p for p in range(partitions) if p % active == self.index], False
        if active == 1:
            return None, False
        return None, True  # fewer partitions than instances: each reads all and keeps its keys

    async def _session(self) -> None:
        """Read with the current assignment until a drain, stop, fence or new assignment."""
        topo = self.topology
        connector = connector_for(topo.input_uri)
        partitions = await connector.partitions(topo.input_uri)
        owned, filtering = self._owned(partitions)
        group = f"xpipe.{self.plan.name}.{self.stage.name}"
        if filtering:
            group += f".{self.index}"
        self.partitions = list(range(partitions)) if owned is None else owned
        if topo.from_source and self.options.max_throughput_per_second:
            share = self.options.max_throughput_per_second / max(1, min(self.active, self.stage.parallelism))
            self._bucket = TokenBucket(share)
        source = connector.source(topo.input_uri, group=group, partitions=owned, codec=topo.input_codec)
        await source.start()
        self._source = source
        self.buffer = _fresh_buffer(self.buffer)
        self.state_name = "running"
        assignment = self.active
        self._changed.clear()
        fetcher = asyncio.create_task(self._fetch_loop(source, filtering, assignment), name="xpipe-stream-fetch")
        processor = asyncio.create_task(self._process_loop(), name="xpipe-stream-process")
        committer = asyncio.create_task(self._commit_loop(source), name="xpipe-stream-commit")
        try:
            done, _ = await asyncio.wait({fetcher, processor}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a fetch or processing failure fails the instance (and the scheduler restarts it)
            await processor  # the fetcher ended (drain, stop, reassignment): the processor finishes the buffer
            await fetcher
        finally:
            for task in (fetcher, processor, committer):
                task.cancel()
            for task in (fetcher, processor, committer):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._source = None
            try:
                if not self.fenced:
                    await self._commit(source, final=True)
            finally:
                await source.stop()

    # ------------------------------------------------------------------ fetch

    async def _fetch_loop(self, source: Source, filtering: bool, assignment: int) -> None:
        buffer, counters, bucket = self.buffer, self.counters, self._bucket
        codec, source_label = self.topology.input_codec, self._source_label
        active = max(1, min(assignment, self.stage.parallelism))
        # Under a rate limit, fetch about a tenth of a second's worth at a time: smooth, not bursty.
        max_fetch = MAX_FETCH_RECORDS if bucket is None else max(1, min(MAX_FETCH_RECORDS, int(bucket.rate_per_s / 10)))
        try:
            while not self.stopping and not self.fenced and self.active == assignment:
                messages = await source.fetch(max_fetch, FETCH_WAIT_S)
                if not messages:
                    continue
                now = time.monotonic()
                kept: list[tuple[int, Any, float]] = []
                for message in messages:
                    index = self._next_index
                    self._next_index += 1
                    self._fetched.append((index, message))
                    partition, seq = message.partition, message.seq
                    if seq > self._fetched_seq.get(partition, -1):
                        self._fetched_seq[partition] = seq
                    if seq <= self._previous_seq.get(partition, -1):
                        counters.redelivered += 1
                    try:
                        record = decode_record(message.value, codec, source=source_label)
                        if filtering:
                            key_value = record_key(record, self.input_key, source=source_label)
                            if partition_of(seq if key_value is None else key_value, active) != self.index:
                                continue  # another instance's key: done here
                    except RecordError as exc:
                        self._fetch_current = kept[0][0] if kept else index
                        await self._dead_letter([(message.value, None)], str(exc))
                        self._fetch_current = None
                        continue
                    kept.append((index, record, now))
                if not kept:
                    continue
                counters.records_in += len(kept)
                if bucket is not None:  # the limit counts the records this instance keeps
                    self._fetch_current = kept[0][0]
                    await bucket.take(len(kept))
                for item in kept:
                    if not buffer.put_nowait(item) and buffer.strategy == "block":
                        self._fetch_current = item[0]
                        await buffer.put(item)
                self._fetch_current = None
        finally:
            self._fetch_current = None
            buffer.close()  # the processor finishes what the buffer holds, then ends

    def _done_upto(self) -> int:
        """Every fetched record with an index up to this one is done: written and
        acknowledged, dropped, skipped or dead-lettered. The rest are in the buffer, in the
        batch being processed, or in the fetcher's hands."""
        first = self._next_index
        oldest = self.buffer.oldest()
        for pending in (self._batch_first, self._fetch_current, None if oldest is None else oldest[0]):
            if pending is not None and pending < first:
                first = pending
        return first - 1

    # ------------------------------------------------------------------ process

    async def _process_loop(self) -> None:
        buffer = self.buffer
        while True:
            if self.windower is not None and self.windower.spec.time_field is None:
                try:
                    batch = await asyncio.wait_for(buffer.get_batch(MAX_BATCH_RECORDS), WINDOW_TICK_S)
                except TimeoutError:
                    await self._fire(self.windower.advance(time.time()))
                    continue
            else:
                batch = await buffer.get_batch(MAX_BATCH_RECORDS)
            if not batch:  # closed and drained
                if self.stopping == "drain" and self.windower is not None and not self.fenced:
                    await self._fire(self.windower.flush())
                return
            if self.stopping == "stop" or self.fenced:
                return  # leave the rest uncommitted: the next attempt reads it again
            self._batch_first = batch[0][0]
            try:
                if self.windower is None:
                    outputs = await self._call_task([item[1] for item in batch], None)
                    await self._write(outputs)
                else:
                    await self._window(batch)
            finally:
                self._batch_first = None
            self.counters.batches += 1
            self.counters.latencies.append((time.monotonic() - batch[0][2], len(batch)))

    async def _window(self, batch: list[tuple[int, Any, float]]) -> None:
        windower, now = self.windower, time.time()
        late: list[Any] = []
        fired = []
        for _, record, _ in batch:
            try:
                windows, late_record = windower.add(record, now_s=now, source=self._source_label)
            except RecordError as exc:
                await self._dead_letter([(None, record)], str(exc))
                continue
            fired += windows
            if late_record is not None:
                late.append(late_record.record)
        if late:
            self.counters.late += len(late)
            await self._write_to(self._late, late)
        await self._fire(fired)

    async def _fire(self, fired: Sequence[Any]) -> None:
        for window in fired:
            outputs = await self._call_task(window.records, (window.start, window.end))
            await self._write(outputs)

    async def _call_task(self, records: list[Any], window: tuple[float, float] | None) -> list[Any]:
        """Run process_batch; retried, then record by record so only the failing ones are dead-lettered."""
        loop = asyncio.get_running_loop()
        error = ""
        for attempt in range(PROCESS_ATTEMPTS):
            try:
                return await loop.run_in_executor(self._thread, self._invoke, records, window)
            except Exception as exc:  # noqa: BLE001 - user code
                error = f"{type(exc).__name__}: {exc}"
                self.counters.errors += 1
                self.counters.last_error = f"process_batch raised {error}"
                log.warning("stage %s[%d]: process_batch raised %s (try %d of %d)", self.stage.name, self.index, error, attempt + 1, PROCESS_ATTEMPTS)
                if attempt + 1 < PROCESS_ATTEMPTS:
                    await asyncio.sleep(PROCESS_BACKOFF_S[min(attempt, len(PROCESS_BACKOFF_S) - 1)])
        if window is not None or len(records) == 1:
            await self._dead_letter([(None, r) for r in records], f"process_batch raised {error}")
            return []
        outputs: list[Any] = []
        for record in records:  # isolate: only the records that fail alone go to the dead-letter stream
            try:
                outputs += await loop.run_in_executor(self._thread, self._invoke, [record], None)
            except Exception as exc:  # noqa: BLE001 - user code
                self.counters.errors += 1
                await self._dead_letter([(None, record)], f"process_batch raised {type(exc).__name__}: {exc}")
        return outputs

    def _invoke(self, records: list[Any], window: tuple[float, float] | None) -> list[Any]:
        task = self.task
        task.window = window
        try:
            out = task.process_batch(list(records))
        finally:
            task.window = None
        if out is None:
            return []
        if not isinstance(out, list):
            out = list(out) if isinstance(out, (tuple,)) else None
            if out is None:
                raise TypeError("process_batch must return a list of records or None")
        return out

    # ------------------------------------------------------------------ write

    async def _open_outputs(self) -> None:
        topo = self.topology
        internal = internal_uri(_first_source(self.plan), self.plan.name, self.stage.name)
        for uri in topo.outputs:
            connector = connector_for(uri)
            # Our own stream: we spread records over its partitions by key (CRC-32), as every
            # instance downstream expects. A user's sink: its broker's own rule (Kafka's
            # murmur2 of the key), so our records land where the user's other producers' do.
            partitions = await connector.ensure(uri, partitions=topo.internal_partitions) if uri == internal else 0
            sink = connector.sink(uri, codec=self.stage.codec)
            await sink.start()
            self._outputs.append(_Output(uri, sink, partitions))
        for uri, attr in ((topo.late_uri, "_late"), (topo.dlq_uri, "_dlq")):
            connector = connector_for(uri)
            await connector.ensure(uri, partitions=1)
            sink = connector.sink(uri, codec="json")
            await sink.start()
            setattr(self, attr, _Output(uri, sink, 1))

    async def _close_outputs(self) -> None:
        for output in (*self._outputs, self._late, self._dlq):
            if output is not None:
                with contextlib.suppress(Exception):
                    await output.sink.stop()

    async def _write(self, records: list[Any]) -> None:
        if not records:
            return
        codec, key, label = self.stage.codec, self.key, f"stage {self.stage.name}"
        encoded: list[tuple[bytes, Any]] = []
        for record in records:
            try:
                value = encode_record(record, codec, source=label)
            except RecordError as exc:
                self.counters.errors += 1
                await self._dead_letter([(None, repr(record)[:10_000])], f"output record: {exc}")
                continue
            try:
                key_value = record_key(record, key, source=label) if key is not None else None
            except RecordError:
                key_value = None  # an output without the key field is spread, not refused
            encoded.append((value, key_value))
        for output in self._outputs:
            out = [output.record(value, _key_bytes(kv), kv) for value, kv in encoded]
            await self._write_with_retries(output, out)
        self.counters.records_out += len(encoded)

    async def _write_to(self, output: _Output | None, records: list[Any]) -> None:
        if output is None or not records:
            return
        out = [output.record(encode_record(r, "json", source="side stream") if not isinstance(r, bytes) else r, None, None) for r in records]
        await self._write_with_retries(output, out)

    async def _write_with_retries(self, output: _Output, records: list[OutRecord]) -> None:
        for delay in (*WRITE_BACKOFF_S, None):
            try:
                await output.sink.write(records)
                return
            except DataStreamError as exc:
                self.counters.last_error = f"write to {output.uri}: {exc}"
                if delay is None:
                    raise DataStreamError(f"stage {self.stage.name!r}: writing to {output.uri} kept failing: {exc}") from exc
                log.warning("stage %s[%d]: write to %s failed (%s); again in %gs", self.stage.name, self.index, output.uri, exc, delay)
                await asyncio.sleep(delay)

    async def _dead_letter(self, items: list[tuple[bytes | None, Any]], error: str) -> None:
        """Write records that could not be processed to ``<stage>.dlq``, each with why."""
        envelopes = []
        for raw, record in items:
            envelope: dict[str, Any] = {"stage": self.stage.name, "instance": self.index, "error": error, "at": time.time()}
            if raw is not None:
                try:
                    envelope["raw"] = raw.decode()
                except UnicodeDecodeError:
                    envelope["raw_base64"] = base64.b64encode(raw).decode()
            elif isinstance(record, bytes):
                envelope["raw_base64"] = base64.b64encode(record).decode()
            else:
                envelope["record"] = record
            envelopes.append(envelope)
        self.counters.dead_lettered += len(envelopes)
        out = []
        for envelope in envelopes:
            try:
                out.append(self._dlq.record(json.dumps(envelope, default=repr).encode(), None, None))
            except (TypeError, ValueError):
                envelope.pop("record", None)
                envelope["record_repr"] = repr(record)[:10_000]
                out.append(self._dlq.record(json.dumps(envelope).encode(), None, None))
        await self._write_with_retries(self._dlq, out)

    # ------------------------------------------------------------------ commit and checkpoint

    async def _commit_loop(self, source: Source) -> None:
        interval = CHECKPOINT_INTERVAL_S if self._stateful else COMMIT_INTERVAL_S
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            await self._commit(source)
            if not self._stateful and time.monotonic() - last_save >= CHECKPOINT_INTERVAL_S:
                last_save = time.monotonic()
                await self._save_checkpoint()  # positions only: what restarted attempts count as redelivered

    @property
    def _stateful(self) -> bool:
        return self.windower is not None or bool(self.task.state)

    async def _commit(self, source: Source, *, final: bool = False) -> None:
        done = self._done_upto()
        fetched = self._fetched
        last: dict[int, Message] = {}
        while fetched and fetched[0][0] <= done:
            _, message = fetched.popleft()
            last[message.partition] = message
        if not last:
            return
        if self._stateful:
            await self._save_checkpoint()
        await source.commit(last)

    def _task_state_bytes(self) -> bytes:
        return pickle.dumps(self.task.state, protocol=5)

    async def _save_checkpoint(self) -> None:
        if self.control is None:
            return
        data = b""
        if self._stateful:
            windows = self.windower.snapshot() if self.windower is not None else None  # the loop's own object
            # The task's state is pickled in the task's thread: process_batch may be changing it now.
            state = await asyncio.get_running_loop().run_in_executor(self._thread, self._task_state_bytes)
            data = pickle.dumps({"state": state, "windows": windows}, protocol=5)
        positions = {p: str(s) for p, s in self._fetched_seq.items()}
        self._checkpoint_seq += 1
        await self.control.save_checkpoint(self.ref, data, positions, self._checkpoint_seq)

    async def _restore(self) -> None:
        if self.control is None:
            return
        checkpoint = await self.control.load_checkpoint(self.plan.name, self.stage.name, self.index)
        if checkpoint is None:
            return
        data, positions, seq = checkpoint
        self._checkpoint_seq = seq
        self._previous_seq = {int(p): int(s) for p, s in positions.items() if s.lstrip("-").isdigit()}
        self._fetched_seq = dict(self._previous_seq)
        if not data:
            return
        try:
            saved = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint: say so, start empty
            log.error("stage %s[%d]: checkpoint unreadable (%s); starting with empty state", self.stage.name, self.index, exc)
            return
        self.task.state = pickle.loads(saved["state"]) if saved.get("state") else {}
        if self.windower is not None and saved.get("windows"):
            self.windower = Windower.restore(self.windower.spec, saved["windows"])

    # ------------------------------------------------------------------ report

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            try:
                await self._report_once()
            except Exception as exc:  # noqa: BLE001 - the coordinator may be failing over: go on
                log.warning("stage %s[%d]: report failed: %s", self.stage.name, self.index, exc)

    async def _report_once(self) -> None:
        if self.control is None:
            return
        source = self._source
        if source is not None:
            with contextlib.suppress(Exception):
                self._lag = await source.lag()
        c = self.counters
        samples, c.latencies = c.latencies, []
        report = {
            "state": "draining" if self.stopping == "drain" and self.state_name == "running" else self.state_name,
            "records_in": c.records_in, "records_out": c.records_out, "dropped": self.buffer.dropped,
            "errors": c.errors, "dead_lettered": c.dead_lettered, "late": c.late, "redelivered": c.redelivered,
            "batches": c.batches, "lag": -1 if self._lag is None else self._lag, "buffer_fill": len(self.buffer),
            "buffer_size": self.buffer.capacity, "latency_p50_s": _percentile(samples, 0.5),
            "latency_p99_s": _percentile(samples, 0.99), "partitions": self.partitions, "last_error": c.last_error,
        }  # fmt: skip
        answer = await self.control.report(self.ref, report)
        if answer is not None:
            self.apply_control(**answer)

    def apply_control(self, *, stop: bool = False, drain: bool = False, active_instances: int = 0, fenced: bool = False) -> None:
        """Act on the coordinator's answer to a report."""
        changed = False
        if fenced and not self.fenced:
            log.warning("stage %s[%d]: a newer attempt owns this instance; stopping", self.stage.name, self.index)
            self.fenced = changed = True
        if stop and self.stopping != "stop":
            self.stopping, changed = "stop", True
        elif drain and not self.stopping:
            self.stopping, changed = "drain", True
        if self.options.auto_scaling:
            active = active_instances or self.stage.parallelism
            if active != self.active:
                self.active, changed = active, True
        if changed:
            self._changed.set()
            if self.stopping == "stop" or self.fenced:
                self.buffer.close()


def _fresh_buffer(old: BoundedBuffer) -> BoundedBuffer:
    """A new buffer for a new session, keeping the drop count of the old one."""
    buffer = BoundedBuffer(old.capacity, old.strategy)
    buffer.dropped = old.dropped
    return buffer


def run_instance(plan: dict[str, Any], stage: str, instance: int, options: dict[str, Any]) -> dict[str, Any]:
    """The task a worker runs for one stage instance; returns its final counters.

    Runs until the stream is stopped or drained. The worker's executor process gives it the
    coordinator's address and credentials (``XPIPE_COORDINATOR``, ``XPIPE_TOKEN``, TLS env).

    Raises:
        DataStreamError: a broker unreachable or a write failing for good: the attempt fails
            and the scheduler retries it, from the last commit.
    """
    from ..telemetry._task import current_attempt
    from ._control import Control

    parsed = StreamPlan.from_dict(plan)
    attempt = current_attempt()
    ref = {
        "stream": parsed.name, "stage": stage, "instance": instance,
        "run_id": attempt[0] if attempt else "", "attempt": attempt[2] if attempt else 0,
        "worker_id": os.environ.get("XPIPE_WORKER_ID", ""),
    }  # fmt: skip
    control = Control.from_env()
    try:
        runtime = StageInstance(parsed, stage, instance, InstanceOptions.from_dict(options), control=control, ref=ref)
        return asyncio.run(runtime.run())
    finally:
        if control is not None:
            control.close()
