"""Hostile input, generated from the proto descriptors, against one real coordinator.

Every field of every request message (and of the worker stream's Register, Heartbeat and
task events) is walked from the descriptors, recursively through nested messages, repeated
fields, maps and oneofs, so a field added to the proto is covered without touching this file.
Each case starts from a VALID request and changes one field to one hostile value: NaN, ±inf,
a negative, the type's largest value, a 1,000,000-character string, a path-traversal string,
garbage bytes. It then goes over real gRPC to a real coordinator process (with a real worker
connected), and after every case the coordinator must still be alive and answering, and the
answer must be OK or a proper refusal: never UNKNOWN or INTERNAL, never a traceback, never
an error message that echoes a megabyte back. Every :data:`CHECK_EVERY` cases, and at the
end, a real pipeline must still run to success.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import helpers_tasks as ht
from tests.harness import Cluster
from xpipe import Pipeline, PipelineManager, Task
from xpipe._codec import encode
from xpipe._proto import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    pipeline_pb2,
    pipeline_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

#: A real pipeline must still run after this many cases.
CHECK_EVERY = 150
#: Answers that are a proper refusal; anything else (UNKNOWN, INTERNAL, UNAVAILABLE) fails. Not
#: RESOURCE_EXHAUSTED: no case comes near the message size limit, and the client reports an
#: answer whose error message is too big to carry ("metadata size exceeds hard limit") so.
PROPER = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
}  # fmt: skip
#: An error message longer than this echoes the hostile value back.
MAX_DETAILS_CHARS = 4096
HUGE = "x" * 1_000_000
TRAVERSAL = ("../../../../etc/passwd", "file:///etc/passwd")
_MAX_DEPTH = 8
_NOT_FINITE = ("=nan", "=inf", "=-inf")

_F = FieldDescriptor
_INT_LIMITS = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1), _F.TYPE_SINT32: (-(2**31), 2**31 - 1), _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1), _F.TYPE_SINT64: (-(2**63), 2**63 - 1), _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1), _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1), _F.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip


def hostile_values(field: FieldDescriptor) -> list[tuple[str, Any]]:
    """The hostile values for one scalar field, by its type: (label, value) pairs."""
    t = field.type
    if t in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        top = 1.7976931348623157e308 if t == _F.TYPE_DOUBLE else 3.4028234e38
        return [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("-1", -1.0), ("max", top)]
    if t in _INT_LIMITS:
        low, high = _INT_LIMITS[t]
        values = [("max", high)]
        if low < 0:
            values += [("-1", -1), ("min", low)]
        return values
    if t == _F.TYPE_ENUM:
        return [("enum-unknown", 2**31 - 1), ("enum-negative", -1)]
    if t == _F.TYPE_BOOL:
        return [("true", True)]
    if t == _F.TYPE_STRING:
        return [("huge", HUGE), *((f"traversal {v}", v) for v in TRAVERSAL)]
    if t == _F.TYPE_BYTES:
        return [("garbage", os.urandom(1024)), ("huge", b"\xff" * 1_000_000)]
    raise AssertionError(f"no hostile values for {field.full_name} of type {t}")


# A path step: (field name, "one" | "first" | "key" | "value"). "first" walks into element 0 of a
# repeated message field (adding one if the base has none); "key"/"value" mutate a map entry.
Path = tuple[tuple[str, str], ...]


def leaf_paths(desc: Descriptor, prefix: Path = (), depth: int = 0) -> Iterator[tuple[Path, FieldDescriptor]]:
    """Every scalar field reachable from ``desc``, with the path to it."""
    if depth > _MAX_DEPTH:
        return
    for field in desc.fields:
        if field.type == _F.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
                yield prefix + ((field.name, "key"),), key
                if value.type == _F.TYPE_MESSAGE:
                    yield from leaf_paths(value.message_type, prefix + ((field.name, "value"),), depth + 1)
                else:
                    yield prefix + ((field.name, "value"),), value
            elif field.is_repeated:
                yield from leaf_paths(entry, prefix + ((field.name, "first"),), depth + 1)
            else:
                yield from leaf_paths(entry, prefix + ((field.name, "one"),), depth + 1)
        else:
            yield prefix + ((field.name, "one"),), field


def _map_key(container: Any) -> Any:
    return next(iter(container), "k")


def mutate(base: Message, path: Path, value: Any) -> Message:
    """A copy of ``base`` with the field at ``path`` set to ``value`` (everything else valid)."""
    msg = type(base)()
    msg.CopyFrom(base)
    node: Any = msg
    for i, (name, how) in enumerate(path):
        last = i == len(path) - 1
        field = node.DESCRIPTOR.fields_by_name[name]
        container = getattr(node, name)
        if how == "key":  # a map: add an entry under the hostile key, with a valid value
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == _F.TYPE_MESSAGE:
                container[value].SetInParent()
            else:
                existing = next(iter(container.values()), None)
                container[value] = existing if existing is not None else type(value_field.default_value)()
            return msg
        if how == "value":
            key = _map_key(container)
            if last:
                container[key] = value
                return msg
            node = container[key]
        elif how == "first":
            node = container[0] if len(container) else container.add()
        elif last:
            if field.is_repeated:
                if len(container):
                    container[0] = value
                else:
                    container.append(value)
            else:
                setattr(node, name, value)
            return msg
        else:
            node = container
    raise AssertionError(f"path {path} does not end at a scalar")


def cases_for(base: Message, only: str = "", skip: str = "\0") -> Iterator[tuple[str, Message]]:
    """(label, request) for every scalar field of ``base``'s type and every hostile value.

    ``only``/``skip``: keep the field paths that contain ``only`` and not ``skip`` (a
    second base covers a oneof alternative the first one does not set).
    """
    if not only:
        yield "base", base
    for path, field in leaf_paths(base.DESCRIPTOR):
        where = ".".join(name + ("[0]" if how == "first" else "{key}" if how == "key" else "") for name, how in path)
        if only not in where or skip in where:
            continue
        for label, value in hostile_values(field):
            yield f"{where}={label}", mutate(base, path, value)


# --------------------------------------------------------------------------- valid bases


def valid_spec(*, command: bool = False) -> common_pb2.PipelineSpec:
    """A small valid pipeline whose first task sets most fields, so each mutation of
    ``tasks[0]`` meets valid neighbours; ``command``: that task runs a command instead."""
    first = common_pb2.TaskSpec(
        name="b", depends_on=["a"], python=common_pb2.PythonCall(import_path="tests.helpers_tasks:add"),
        args=encode(((4,), {}), "pickle", what="args"), timeout_s=30,
        retry=common_pb2.RetryPolicy(max_retries=1, retry_delay_s=0.01, max_retry_delay_s=1, jitter=0.1),
        resources=common_pb2.Resources(cpu_cores=0.1, memory_bytes=1 << 20, custom={"lic": 0}),
        labels={"team": "x"}, circuit="dep", flows=[common_pb2.DataFlowBinding(source_task="a", parameter="extra")],
    )  # fmt: skip
    if command:
        first.ClearField("args")
        first.ClearField("flows")
        first.command.CopyFrom(common_pb2.CommandCall(argv=["true"], env={"A": "1"}, cwd="/"))
    source = common_pb2.TaskSpec(name="a", python=common_pb2.PythonCall(import_path="tests.helpers_tasks:echo"),
                                 args=encode(((3,), {}), "pickle", what="args"))  # fmt: skip
    return common_pb2.PipelineSpec(
        name="hostile", tasks=[first, source], labels={"k": "v"}, wait_for_resources_s=1,
        code=[common_pb2.CodeBlob(code_hash="0" * 64, data=b"not referred to")],
        resource_limits=common_pb2.Resources(cpu_cores=8),
        fault_tolerance=common_pb2.FaultTolerance(circuit_window_s=60, circuit_open_s=30),
    )  # fmt: skip


def valid_register(worker_id: str) -> worker_pb2.Register:
    # A tiny cpu offer: no real task (1 core by default) is placed on these short-lived workers.
    return worker_pb2.Register(
        worker_id=worker_id, name="hostile", host="h", slots=1, resources=common_pb2.Resources(cpu_cores=0.001),
        labels={"k": "v"}, handlers=["h"],
    )  # fmt: skip


def valid_event() -> worker_pb2.TaskEvent:
    now = time.time()
    return worker_pb2.TaskEvent(
        attempt=worker_pb2.AttemptRef(run_id="no-such-run", task="t", attempt=1), at=now, started_at=now - 1,
        succeeded=worker_pb2.Succeeded(result=common_pb2.Payload(codec=common_pb2.CODEC_JSON, data=b"1")),
    )  # fmt: skip


# --------------------------------------------------------------------------- running cases


@dataclass
class Outcome:
    label: str
    code: grpc.StatusCode
    details: str


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("hostile"), workers=1, slots=4) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def channel(hostile: Cluster) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(hostile.address, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def finished_run(hostile: Cluster) -> str:
    """A run that finished, for the read-only RPCs to point at."""
    with PipelineManager(coordinator=hostile.address) as pm:
        return _real_pipeline(pm)


@pytest.fixture(scope="module")
def artifact_ref(hostile: Cluster, channel) -> tuple[str, str, str]:
    """(run, task, ref) of a finished task whose result travels by reference (256 KiB or more,
    compressed: 800 KB of hex is about 400 KB in zstd)."""
    blob = Task.command(
        "blob", [sys.executable, "-c", "import os,sys; sys.stdout.write(os.urandom(400_000).hex())"],
        stdout_limit_bytes=2 << 20,
    )  # fmt: skip
    p = Pipeline("big-result")
    p.add_task(blob)
    with PipelineManager(coordinator=hostile.address) as pm:
        run_id = pm.execute_pipeline(p, monitor=False).run_id
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    reply = stub.GetTaskResult(pipeline_pb2.GetTaskResultRequest(run_id=run_id, task="blob", inline_max_bytes=1))
    assert reply.result.artifact_ref, reply
    return run_id, "blob", reply.result.artifact_ref


def _real_pipeline(pm: PipelineManager) -> str:
    p = Pipeline("still-works")
    first = Task("first", ht.echo, args=(20,))
    p.add_tasks([first, Task("second", ht.add, depends_on=[first], args=(22,))])
    result = pm.execute_pipeline(p, monitor=False)
    assert result.succeeded and result.outputs["second"] == 42, result
    return result.run_id


class Checker:
    """Runs cases one by one and checks the coordinator after each."""

    def __init__(self, cluster: Cluster, channel: grpc.Channel):
        self.cluster = cluster
        self.health = health_pb2_grpc.HealthStub(channel)
        self.count = 0
        self.codes: dict[str, int] = {}
        self.bad: list[str] = []

    def run(self, label: str, call: Callable[[], Outcome]) -> None:
        self.count += 1
        try:
            outcome = call()
        except grpc.RpcError as exc:
            outcome = Outcome(label, exc.code(), exc.details() or "")
        self.codes[outcome.code.name] = self.codes.get(outcome.code.name, 0) + 1
        if label.endswith(" base") and outcome.code != grpc.StatusCode.OK:
            self.bad.append(f"{label}: the valid base was refused: {outcome.code.name} {outcome.details[:300]!r}")
        elif label.endswith(_NOT_FINITE) and outcome.code != grpc.StatusCode.INVALID_ARGUMENT:
            # No float anywhere in the API may be NaN or infinite.
            self.bad.append(f"{label}: accepted ({outcome.code.name}); NaN and infinity must be refused")
        elif outcome.code not in PROPER:
            self.bad.append(f"{label}: {outcome.code.name} {outcome.details[:300]!r}")
        elif "Traceback" in outcome.details or len(outcome.details) > MAX_DETAILS_CHARS:
            self.bad.append(f"{label}: {outcome.code.name} with a {len(outcome.details)}-char message")
        assert self.cluster.coordinator is not None and self.cluster.coordinator.alive(), (
            f"the coordinator died on {label}:\n{self.cluster.coordinator.log_tail(60) if self.cluster.coordinator else ''}"
        )
        reply = self.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"not serving after {label}"
        if self.count % CHECK_EVERY == 0:
            with PipelineManager(coordinator=self.cluster.address) as pm:
                _real_pipeline(pm)

    def finish(self, what: str, minimum: int) -> None:
        print(f"{what}: {self.count} hostile cases; answers: {self.codes}")
        assert not self.bad, f"{len(self.bad)} of {self.count} cases got an improper answer:\n" + "\n".join(self.bad)
        assert self.count >= minimum, f"only {self.count} cases generated for {what}; the walk lost fields"
        assert all(proc.alive() for proc in self.cluster.workers.values()), "a real worker died"
        with PipelineManager(coordinator=self.cluster.address) as pm:
            _real_pipeline(pm)


def _unary(method: Callable[..., Any], label: str, request: Message) -> Outcome:
    method(request, timeout=20)
    return Outcome(label, grpc.StatusCode.OK, "")


def _first_event(method: Callable[..., Any], label: str, request: Message) -> Outcome:
    call = method(request, timeout=20)
    try:
        next(call, None)
    finally:
        call.cancel()
    return Outcome(label, grpc.StatusCode.OK, "")


def _stream(stub: worker_pb2_grpc.WorkerServiceStub, label: str, messages: list[worker_pb2.WorkerMessage]) -> Outcome:
    """A raw worker stream: send ``messages``, half-close, read to the end."""
    call = stub.Connect(iter(messages), timeout=20)
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass  # the status is read below
    return Outcome(label, call.code(), call.details() or "")


def test_pipeline_service_survives_hostile_requests(hostile, channel, finished_run, artifact_ref):
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    bases: list[tuple[str, Callable[..., Any], Message, Callable[..., Outcome]]] = [
        ("SubmitPipeline", stub.SubmitPipeline, pipeline_pb2.SubmitPipelineRequest(pipeline=valid_spec()), _unary),
        ("SubmitPipeline(command)", stub.SubmitPipeline,
         pipeline_pb2.SubmitPipelineRequest(pipeline=valid_spec(command=True)), _unary),
        ("GetRun", stub.GetRun, pipeline_pb2.GetRunRequest(run_id=finished_run, include_results=True), _unary),
        ("ListRuns", stub.ListRuns, pipeline_pb2.ListRunsRequest(limit=5), _unary),
        ("CancelRun", stub.CancelRun, pipeline_pb2.CancelRunRequest(run_id=finished_run), _unary),
        ("GetTaskResult", stub.GetTaskResult, pipeline_pb2.GetTaskResultRequest(run_id=finished_run, task="first"),
         _unary),
        ("GetTaskStats", stub.GetTaskStats, pipeline_pb2.GetTaskStatsRequest(names=["first"]), _unary),
        ("GetTaskLogs", stub.GetTaskLogs, pipeline_pb2.GetTaskLogsRequest(run_id=finished_run, task="first"),
         _first_event),
        ("WatchRun", stub.WatchRun, pipeline_pb2.WatchRunRequest(run_id=finished_run, summary_only=True), _first_event),
        ("GetArtifact", stub.GetArtifact, pipeline_pb2.GetArtifactRequest(
            run_id=artifact_ref[0], task=artifact_ref[1], ref=artifact_ref[2], chunk_bytes=65536), _first_event),
        ("WatchRun+submit", stub.WatchRun, pipeline_pb2.WatchRunRequest(
            submit=pipeline_pb2.SubmitPipelineRequest(pipeline=valid_spec()), summary_only=True), _first_event),
    ]  # fmt: skip
    # Every method of the service has a base, so a new RPC is noticed here.
    methods = {m.name for m in pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].methods}
    assert methods == {name.split("+")[0].split("(")[0] for name, *_ in bases}
    # The command fields are mutated on a command task (else each meets "empty argv" first).
    command = "tasks[0].command."
    checker = Checker(hostile, channel)
    for name, method, base, how in bases:
        only, skip = (command, "\0") if name.endswith("(command)") else ("", command)
        for label, request in cases_for(base, only, skip):
            checker.run(f"{name} {label}", lambda: how(method, f"{name} {label}", request))
    checker.finish("PipelineService", minimum=400)


def test_admin_service_survives_hostile_requests(hostile, channel, finished_run):
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    # DrainWorker gets a name no worker has; hostile values are never a real worker's name.
    # InstallDependencies names a package the workers refuse anyway (none has --allow-install).
    bases = {
        "DrainWorker": admin_pb2.DrainWorkerRequest(name="no-such-worker"),
        "GetStory": admin_pb2.GetStoryRequest(run_id=finished_run, task="first"),
        "InstallDependencies": admin_pb2.InstallDependenciesRequest(packages=["xpipe-hostile-probe"], timeout_s=5),
    }
    checker = Checker(hostile, channel)
    for m in service.methods:
        base = bases.get(m.name) or GetMessageClass(m.input_type)()
        method = getattr(stub, m.name)
        for label, request in cases_for(base):
            checker.run(f"{m.name} {label}", lambda: _unary(method, f"{m.name} {label}", request))
    checker.finish("AdminService", minimum=len(service.methods))


def test_worker_stream_survives_hostile_messages(hostile, channel):
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    checker = Checker(hostile, channel)

    def fresh() -> str:
        return f"hostile-{uuid.uuid4().hex[:8]}"

    # Which bodies a WorkerMessage may carry comes from the descriptor; each needs a base here.
    bodies = {f.name for f in worker_pb2.WorkerMessage.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert bodies == {"register", "heartbeat", "events", "install_result", "task_logs", "checkpoint"}, (
        f"a new WorkerMessage body needs a base: {bodies}")
    for label, reg in cases_for(valid_register("template")):
        if reg.worker_id == "template":
            reg.worker_id = fresh()
        messages = [worker_pb2.WorkerMessage(register=reg)]
        checker.run(f"Register {label}", lambda: _stream(stub, f"Register {label}", messages))
    heartbeat = worker_pb2.Heartbeat(
        metrics=worker_pb2.WorkerMetrics(cpu_percent=5, memory_percent=10, memory_used_bytes=1 << 30, load_1m=0.5),
        running=[worker_pb2.AttemptRef(run_id="no-such-run", task="t", attempt=1)],
    )  # fmt: skip
    events = worker_pb2.TaskEventBatch(events=[valid_event()])
    # An answer to no install request: dropped (logged) when valid, the stream aborted when not.
    install_result = worker_pb2.InstallResult(request_id="no-such-request", status="FAILED", message="m", output_tail="t")
    # Output of an attempt no run has: stored (logs are not checked against runs), or refused naming the field.
    task_logs = worker_pb2.TaskLogBatch(entries=[worker_pb2.TaskLogEntry(
        attempt=worker_pb2.AttemptRef(run_id="no-such-run", task="t", attempt=1), stream=worker_pb2.LOG_STREAM_STDOUT,
        data=b"hello\n", dropped_bytes=3, final=True)])  # fmt: skip
    # A save of an attempt no run has: ignored (logged) when valid, refused naming the field when not.
    checkpoint = worker_pb2.CheckpointSave(attempt=worker_pb2.AttemptRef(run_id="no-such-run", task="t", attempt=1),
                                           seq=1, state=common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, data=b"x"))
    for body, base in (("heartbeat", heartbeat), ("events", events), ("install_result", install_result),
                       ("task_logs", task_logs), ("checkpoint", checkpoint)):  # fmt: skip
        for label, msg in cases_for(base):
            messages = [
                worker_pb2.WorkerMessage(register=valid_register(fresh())),
                worker_pb2.WorkerMessage(**{body: msg}),
            ]
            checker.run(f"{body} {label}", lambda: _stream(stub, f"{body} {label}", messages))
    checker.finish("WorkerService.Connect", minimum=150)


def test_nan_resources_are_refused_naming_the_field(channel):
    """The issue's own example, end to end: the answer names the task and the field path."""
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    spec = valid_spec()
    spec.tasks[0].name = "extract"
    spec.tasks[0].resources.cpu_cores = math.nan
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "task 'extract': resources.cpu_cores is nan; must be a finite number >= 0"


def test_a_bad_heartbeat_ends_only_that_stream_naming_the_field(hostile, channel):
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    worker_id = f"hostile-{uuid.uuid4().hex[:8]}"
    bad = worker_pb2.Heartbeat(metrics=worker_pb2.WorkerMetrics(cpu_percent=math.nan))
    outcome = _stream(stub, "nan heartbeat", [
        worker_pb2.WorkerMessage(register=valid_register(worker_id)), worker_pb2.WorkerMessage(heartbeat=bad),
    ])  # fmt: skip
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details == "Heartbeat.metrics.cpu_percent is nan; must be a finite number >= 0"
    listed = {w.name: w.state for w in hostile.list_workers()}
    assert listed["w0"] in ("ready", "busy")  # the real worker is untouched
    assert "bad message: Heartbeat.metrics.cpu_percent is nan" in hostile.coordinator.log_text()
