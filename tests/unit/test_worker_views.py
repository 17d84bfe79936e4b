"""The worker reads coordinator messages through views that keep assignments as bytes.

A view must match the message it reads field for field, or the worker silently drops
what it does not declare (a new message kind, say): these tests fail first.
"""

from __future__ import annotations

from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2


def fields(message) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_the_view_has_every_coordinator_message_kind():
    assert fields(worker_pb2.CoordinatorMessageView) == fields(worker_pb2.CoordinatorMessage)
    assert fields(worker_pb2.AssignmentBatchView) == fields(worker_pb2.AssignmentBatch)


def test_the_head_reads_only_fields_of_the_assignment_by_their_own_numbers():
    for head, full in [(worker_pb2.AssignmentHead, worker_pb2.Assignment), (worker_pb2.TaskHead, pb.TaskSpec)]:
        assert fields(head).items() <= fields(full).items(), head.DESCRIPTOR.name


def test_assignments_arrive_as_the_bytes_the_coordinator_wrote_and_the_head_reads_them():
    sent = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id="r1", task="t", attempt=2), last_try=True)
    sent.task.name = "t"
    sent.task.python.code_hash = "ab" * 32
    sent.task.timeout_s = 5.0
    sent.task.resources.memory_bytes = 1 << 20
    sent.task.args.data = b"args"
    sent.upstream.add(data=b"x" * 1000)
    message = worker_pb2.CoordinatorMessage()
    message.assignments.assignments.append(sent)
    message.assignments.code.add(code_hash="ab" * 32, data=b"code")

    view = worker_pb2.CoordinatorMessageView.FromString(message.SerializeToString())
    assert view.WhichOneof("body") == "assignments"
    [encoded] = view.assignments.assignments
    assert worker_pb2.Assignment.FromString(encoded) == sent  # the child gets it whole
    head = worker_pb2.AssignmentHead.FromString(encoded)
    assert (head.attempt.run_id, head.attempt.task, head.attempt.attempt) == ("r1", "t", 2)
    assert head.task.WhichOneof("kind") == "python" and head.task.python.code_hash == "ab" * 32
    assert head.task.timeout_s == 5.0 and head.task.resources.memory_bytes == 1 << 20
    command = worker_pb2.Assignment()
    command.task.command.argv.append("true")
    assert worker_pb2.AssignmentHead.FromString(command.SerializeToString()).task.WhichOneof("kind") == "command"
