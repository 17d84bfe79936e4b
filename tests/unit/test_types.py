"""The client's domain types: built from the wire messages, with states as names and 0 times as None."""

from __future__ import annotations

import dataclasses

import pytest

from xpipe import CircuitInfo, ClusterStatus, NodeRecovery, RunInfo, RunSummary, TaskInfo, TaskResult, WorkerInfo
from xpipe._codec import encode
from xpipe._proto import admin_pb2, pipeline_pb2
from xpipe._proto import common_pb2 as pb
from xpipe._types import RUN_STATES, TASK_STATES, RunEvent


def _summary(**kw) -> pipeline_pb2.RunSummary:
    fields = dict(run_id="r1", pipeline="etl", state=pb.RUN_FAILED, created_at=100.0, finished_at=0.0,
                  total_tasks=2, succeeded_tasks=1, failed_tasks=1)  # fmt: skip
    fields.update(kw)
    return pipeline_pb2.RunSummary(**fields)


def test_every_enum_value_has_a_name_without_prefix():
    assert set(RUN_STATES.values()) == {"PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}
    assert TASK_STATES[pb.UPSTREAM_FAILED] == "UPSTREAM_FAILED" and len(TASK_STATES) == len(pb.TaskState.keys()) - 1


def test_run_summary_names_its_state_and_turns_zero_times_into_none():
    s = RunSummary.from_proto(_summary())
    assert s == RunSummary("r1", "etl", "FAILED", 100.0, None, 2, 1, 1)
    assert s.finished
    assert RunSummary.from_proto(_summary(state=pb.RUN_STATE_UNSPECIFIED)).state == "UNSPECIFIED"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.state = "RUNNING"  # type: ignore[misc]


def test_run_info_decodes_results_and_flattens_errors():
    ok = pipeline_pb2.TaskInfo(name="a", state=pb.SUCCEEDED, attempts=1, worker="w0", started_at=1.0, finished_at=2.0,
                               result=encode({"rows": 3}))  # fmt: skip
    none = pipeline_pb2.TaskInfo(name="n", state=pb.SUCCEEDED, attempts=1, result=encode(None))
    bad = pipeline_pb2.TaskInfo(name="b", state=pb.FAILED, attempts=3, worker="w1", started_at=2.0, finished_at=3.0,
                                error=pb.TaskError(error_type="TIMEOUT", exception_type="", message="too slow"))  # fmt: skip
    info = RunInfo.from_proto(pipeline_pb2.RunInfo(summary=_summary(), tasks=[ok, none, bad]))
    assert info.run_id == "r1" and info.state == "FAILED"
    a, n, b = info.tasks
    assert (a.state, a.has_result, a.result, a.error) == ("SUCCEEDED", True, {"rows": 3}, None)
    assert (n.has_result, n.result) == (True, None)  # a returned None is not "no result"
    assert b == TaskInfo("b", "FAILED", 3, "w1", 2.0, 3.0, error="too slow", error_type="TIMEOUT")
    assert info.task("b") is b
    with pytest.raises(KeyError, match=r"no task 'zz'.*\['a', 'n', 'b'\]"):
        info.task("zz")


def test_run_event_and_task_result():
    event = RunEvent.from_proto(pipeline_pb2.RunEvent(summary=_summary(state=pb.RUN_RUNNING),
                                                      changed=[pipeline_pb2.TaskInfo(name="a", state=pb.RUNNING)]))  # fmt: skip
    assert event.summary.state == "RUNNING" and not event.summary.finished
    assert [(t.name, t.state, t.started_at) for t in event.changed] == [("a", "RUNNING", None)]
    done = TaskResult.from_proto(pipeline_pb2.TaskResult(state=pb.SUCCEEDED, result=encode([1, 2])), task="a")
    assert done == TaskResult("SUCCEEDED", True, [1, 2])
    pending = TaskResult.from_proto(pipeline_pb2.TaskResult(state=pb.PENDING), task="a")
    assert (pending.state, pending.has_value, pending.value) == ("PENDING", False, None)


def test_worker_info_has_plain_dicts():
    msg = admin_pb2.WorkerInfo(worker_id="w0-1", name="w0", host="h", state="busy", slots=2, running=2,
                               resources=pb.Resources(cpu_cores=4, memory_bytes=2**30, custom={"fpga": 1}),
                               labels={"zone": "a"}, handlers=["resize"], last_heartbeat=5.0,
                               memory_enforcement="rlimit")  # fmt: skip
    w = WorkerInfo.from_proto(msg)
    assert w.resources == {"cpu_cores": 4.0, "memory_bytes": float(2**30), "gpu": 0.0, "fpga": 1.0}
    assert (w.labels, w.handlers, w.metrics, w.last_heartbeat) == ({"zone": "a"}, ("resize",), {}, 5.0)
    msg.metrics.cpu_percent = 50.0
    assert WorkerInfo.from_proto(msg).metrics["cpu_percent"] == 50.0


def _status() -> ClusterStatus:
    return ClusterStatus.from_proto(admin_pb2.ClusterStatus(
        coordinator_id="c1", leader_address="127.0.0.1:1", members=["127.0.0.1:1"], term=3, workers=2,
        active_runs=1, version="0.1.0", unhealthy_workers=["w9"],
        circuits=[admin_pb2.CircuitInfo(name="p/t", state="open", failures=3, opened_at=7.0)],
    ))  # fmt: skip


def test_cluster_status_attributes():
    s = _status()
    assert (s.leader, s.term, s.members, s.workers, s.unhealthy_nodes, s.active_runs) == (
        "127.0.0.1:1", 3, ("127.0.0.1:1",), 2, ("w9",), 1)
    assert s.circuits == (CircuitInfo("p/t", "open", 3, 7.0),)


def test_cluster_status_old_dict_keys_still_work_with_a_warning():
    s = _status()
    with pytest.warns(DeprecationWarning, match=r"use status\.workers"):
        assert s["workers"] == 2
    with pytest.warns(DeprecationWarning):
        assert s["circuits"] == [{"name": "p/t", "state": "open", "failures": 3, "opened_at": 7.0}]
    with pytest.warns(DeprecationWarning):
        assert s["members"] == ["127.0.0.1:1"]
    with pytest.raises(KeyError, match="'unhealthy_nodes'.*attributes"):
        s["unhealthy_nodes"]  # new fields are attributes only


def test_node_recovery():
    reply = admin_pb2.ForgetWorkersResponse(forgotten=["w1"], healthy=["w0"], unknown=["nobody"])
    assert NodeRecovery.from_proto(reply) == NodeRecovery(("w1",), ("w0",), ("nobody",))


def test_error_type_is_read_through_the_enum_and_from_old_records_alike():
    """A record with only the enum (a polyglot client's) or only the old string reads the same."""
    from xpipe import TaskInfo
    from xpipe._proto import common_pb2, pipeline_pb2

    new = pipeline_pb2.TaskInfo(name="t", state=common_pb2.FAILED)
    new.error.type = common_pb2.ERROR_TYPE_TIMEOUT
    old = pipeline_pb2.TaskInfo(name="t", state=common_pb2.FAILED)
    old.error.error_type = "TIMEOUT"
    assert TaskInfo.from_proto(new).error_type == TaskInfo.from_proto(old).error_type == "TIMEOUT"
