"""The engine writes each Assignment as bytes (its TaskSpec serialized once, not copied):
they must parse to the very Assignment a message built field by field would be."""

from __future__ import annotations

import pytest

from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._engine import assignment_bytes
from xpipe.coordinator._events import Assign


def _built(action: Assign) -> worker_pb2.Assignment:
    run_id, task, attempt = action.attempt
    return worker_pb2.Assignment(
        attempt=worker_pb2.AttemptRef(run_id=run_id, task=task, attempt=attempt),
        task=action.task, upstream=action.upstream, last_try=action.last_try,
    )  # fmt: skip


@pytest.mark.parametrize("args_bytes", [0, 1, 127, 128, 300, 20_000, 3_000_000])  # 1-, 2-, 3-byte lengths
@pytest.mark.parametrize("last_try", [False, True])
def test_assignment_bytes_parse_to_the_assignment_built_field_by_field(args_bytes, last_try):
    spec = pb.TaskSpec(name="t\u00e9", depends_on=["a", "b"], python=pb.PythonCall(code_hash="c" * 64),
                       args=pb.Payload(data=b"\x80" * args_bytes), timeout_s=2.5, labels={"gpu": "a100"})  # fmt: skip
    upstream = (pb.Payload(codec=pb.CODEC_RAW, data=b"x" * 200), pb.Payload())
    action = Assign("w1", ("0123456789abcdef", spec.name, 3), spec, upstream, (), last_try)

    raw = assignment_bytes(action)

    assert worker_pb2.Assignment.FromString(raw) == _built(action)
    head = worker_pb2.AssignmentHead.FromString(raw)  # what the worker's parent reads
    seen = (head.attempt.task, head.attempt.attempt, head.task.name, head.last_try)
    assert seen == (spec.name, 3, spec.name, last_try)


def test_an_assignment_batch_of_bytes_is_read_as_the_coordinator_message():
    specs = [pb.TaskSpec(name=f"t{i}", python=pb.PythonCall(import_path="m:f")) for i in range(3)]
    actions = [Assign("w1", ("r", s.name, 1), s, ()) for s in specs]
    view = worker_pb2.CoordinatorMessageView(
        assignments=worker_pb2.AssignmentBatchView(assignments=[assignment_bytes(a) for a in actions])
    )
    # The stream's generated serializer is CoordinatorMessage's: it must write the view too.
    wire = worker_pb2.CoordinatorMessage.SerializeToString(view)
    parsed = worker_pb2.CoordinatorMessage.FromString(wire)
    assert list(parsed.assignments.assignments) == [_built(a) for a in actions]


@pytest.mark.parametrize("traceparent", ["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
def test_a_traced_run_adds_its_traceparent_and_an_untraced_one_adds_no_byte(traceparent):
    spec = pb.TaskSpec(name="t", python=pb.PythonCall(import_path="m:f"))
    plain = assignment_bytes(Assign("w1", ("r", "t", 1), spec, ()))
    raw = assignment_bytes(Assign("w1", ("r", "t", 1), spec, (), traceparent=traceparent))

    parsed = worker_pb2.Assignment.FromString(raw)
    assert parsed.traceparent == traceparent and parsed.task == spec
    assert len(raw) == len(plain) + (2 + len(traceparent) if traceparent else 0)
    assert worker_pb2.AssignmentHead.FromString(raw).task.name == "t"  # the worker's parent reads past it
