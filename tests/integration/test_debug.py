"""Debug sessions (docs/debugging.md) on real coordinator and worker processes.

One coordinator with one single-slot worker serves the module: a paused debug run must
leave that one slot to other runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster
from xpipe import DebugPause, Pipeline, PipelineManager, SerializationError, Task, task

USERS = 1500  # more than the seed's breakpoint threshold (len(data) > 1000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(Path(tmp_path_factory.mktemp("debug")), workers=1, slots=1) as c:
        yield c


@pytest.fixture
def pm(cluster: Cluster) -> Iterator[PipelineManager]:
    with PipelineManager(coordinator=cluster.address) as manager:
        register_user_analytics(manager)
        yield manager


def register_user_analytics(pm: PipelineManager, users: int = USERS) -> Pipeline:
    """The seed's "Developer Experience" sample, with its user functions filled in."""

    @pm.pipeline("user_analytics")
    def create_user_analytics_pipeline():
        """Create user analytics pipeline with decorators."""

        @task("extract_users")
        def extract_user_data():
            return [{"id": i, "visits": i % 7} for i in range(users)]

        @task("analyze_behavior", depends_on=["extract_users"])
        def analyze_user_behavior(user_data, min_visits=3):
            return {"active": sum(1 for u in user_data if u["visits"] >= min_visits), "users": len(user_data)}

        @task("generate_insights", depends_on=["analyze_behavior"])
        def generate_insights(behavior_data):
            return f"{behavior_data['active']} of {behavior_data['users']} users are active"

        return [extract_user_data, analyze_user_behavior, generate_insights]

    return create_user_analytics_pipeline


def expected_insight(users: int = USERS) -> str:
    active = sum(1 for i in range(users) if i % 7 >= 3)
    return f"{active} of {users} users are active"


def test_the_seed_sequence_steps_pauses_at_a_breakpoint_and_runs_to_the_end(pm):
    debug_session = pm.create_debug_session("user_analytics")
    assert (debug_session.state, debug_session.paused_at) == ("not_started", None)

    pause = debug_session.step_through_task("extract_users")
    assert pause == DebugPause("extract_users", before=False, reason="step through 'extract_users'")
    assert (debug_session.state, debug_session.paused_at) == ("paused", "extract_users")
    user_data = debug_session.inspect_data("user_data")  # analyze_behavior's parameter
    assert len(user_data) == USERS and user_data[1] == {"id": 1, "visits": 1}
    assert debug_session.inspect_data("extract_users") == user_data  # a task's output by its name
    assert debug_session.inspect_data("min_visits") == 3  # a default is an input too
    # Nothing runs while paused: the next task waits in HELD.
    assert pm.get_run(debug_session.run_id).tasks["analyze_behavior"].status == "held"

    debug_session.set_breakpoint("analyze_behavior", condition="len(data) > 1000")
    pause = debug_session.continue_(timeout_s=30)
    assert pause is not None and (pause.task, pause.before) == ("analyze_behavior", True)
    assert "len(data) > 1000" in pause.reason and debug_session.paused_at == "analyze_behavior"
    assert len(debug_session.inspect_data("user_data")) == USERS
    assert pm.get_run(debug_session.run_id).tasks["analyze_behavior"].status == "held"

    assert debug_session.continue_(timeout_s=30) is None
    assert (debug_session.state, debug_session.paused_at) == ("finished", None)
    assert debug_session.result.outputs["generate_insights"] == expected_insight()
    with pytest.raises(RuntimeError, match="is finished; create a new one"):
        debug_session.continue_()


def test_a_breakpoint_whose_condition_is_false_does_not_pause(pm):
    debug = pm.create_debug_session("user_analytics")
    debug.set_breakpoint("analyze_behavior", condition="len(user_data) > 1000000 or min_visits != 3")
    assert debug.continue_(timeout_s=30) is None
    assert debug.state == "finished" and debug.result.status == "succeeded"
    assert debug.result.outputs["generate_insights"] == expected_insight()


def test_a_step_stops_before_a_breakpoint_on_its_way(pm):
    debug = pm.create_debug_session("user_analytics")
    debug.set_breakpoint("analyze_behavior")  # no condition: always
    pause = debug.step_through_task("generate_insights", timeout_s=30)
    assert (pause.task, pause.before, pause.reason) == ("analyze_behavior", True, "breakpoint")
    pause = debug.step_through_task("generate_insights", timeout_s=30)  # again: past the breakpoint
    assert (pause.task, pause.before) == ("generate_insights", False)
    assert debug.inspect_data("generate_insights") == expected_insight()
    assert debug.inspect_data("analyze_behavior")["users"] == USERS
    assert debug.continue_(timeout_s=30) is None and debug.state == "finished"


def test_abort_cancels_the_run(pm):
    debug = pm.create_debug_session("user_analytics")
    debug.step_through_task("extract_users", timeout_s=30)
    debug.abort(timeout_s=30)
    assert (debug.state, debug.paused_at) == ("aborted", None)
    run = pm.get_run(debug.run_id)
    assert run.status == "cancelled"
    assert {name: t.status for name, t in run.tasks.items()} == {
        "extract_users": "succeeded", "analyze_behavior": "cancelled", "generate_insights": "cancelled",
    }  # fmt: skip


def test_a_paused_run_holds_no_slot_and_other_runs_go_on(pm, cluster):
    assert cluster.slots == 1 and len(cluster.workers) == 1
    debug = pm.create_debug_session("user_analytics")
    debug.set_breakpoint("generate_insights")
    pause = debug.continue_(timeout_s=30)
    assert pause.task == "generate_insights" and pause.before

    other = Pipeline("meanwhile")
    other.add_tasks([Task("one", sum, args=([1, 2],)), Task("two", sum, args=([3, 4],))])
    result = pm.execute_pipeline(other, monitor=False, timeout_s=30)
    assert result.outputs == {"one": 3, "two": 7}
    assert debug.state == "paused"

    assert debug.continue_(timeout_s=30) is None
    assert debug.result.outputs["generate_insights"] == expected_insight()


def test_a_condition_that_fails_when_evaluated_pauses_and_says_why(pm):
    debug = pm.create_debug_session("user_analytics")
    debug.set_breakpoint("analyze_behavior", condition="data['id'] > 3")  # data is a list
    pause = debug.continue_(timeout_s=30)
    assert (pause.task, pause.before) == ("analyze_behavior", True)
    assert pause.reason.startswith("breakpoint condition \"data['id'] > 3\" failed: TypeError")
    assert debug.state == "paused"
    assert debug.continue_(timeout_s=30) is None and debug.state == "finished"


def test_works_on_the_embedded_default(tmp_path):
    with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "local") as pm:
        register_user_analytics(pm, users=10)
        debug = pm.create_debug_session("user_analytics")
        debug.set_breakpoint("analyze_behavior", condition="len(data) > 5")
        pause = debug.step_through_task("generate_insights", timeout_s=60)
        assert (pause.task, pause.before) == ("analyze_behavior", True)
        assert len(debug.inspect_data("data")) == 10
        assert debug.continue_(timeout_s=60) is None
        assert debug.result.outputs["generate_insights"] == expected_insight(10)


def test_a_step_that_times_out_leaves_the_run_going_and_close_aborts_it(cluster):
    from tests import helpers_tasks as ht

    slow = Pipeline("slow_debug")
    slow.add_tasks([Task("nap", ht.sleep, args=(1.0,)), Task("after", ht.noop, depends_on=["nap"])])
    with PipelineManager(coordinator=cluster.address) as pm:
        debug = pm.create_debug_session(slow)
        with pytest.raises(TimeoutError, match=r"waited task 'nap' to finish past the timeout; it goes on"):
            debug.step_through_task("nap", timeout_s=0.2)
        assert debug.state == "running"
        pause = debug.step_through_task("nap", timeout_s=30)
        assert (pause.task, pause.before) == ("nap", False)
        run_id = debug.run_id
    # Closing the manager aborted the run it left paused: no task stays held for ever.
    with PipelineManager(coordinator=cluster.address) as pm:
        run = pm.get_run(run_id)
        assert run.status == "cancelled" and run.tasks["after"].status == "cancelled"


def test_a_paused_run_stays_paused_across_a_coordinator_restart(tmp_path):
    # A short heartbeat deadline: the restarted coordinator waits that long for workers to report.
    args = ("--heartbeat-timeout-s", "2", "--heartbeat-interval-s", "0.25")
    with Cluster(tmp_path, workers=1, slots=1, coordinator_args=args) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        register_user_analytics(pm, users=20)
        debug = pm.create_debug_session("user_analytics")
        debug.step_through_task("extract_users", timeout_s=30)
        c.restart_coordinator()
        # HELD is stored with the task: the new coordinator holds it too, and runs nothing.
        assert pm.get_run(debug.run_id).tasks["analyze_behavior"].status == "held"
        assert debug.state == "paused" and len(debug.inspect_data("user_data")) == 20
        debug.set_breakpoint("generate_insights", condition="behavior_data['users'] == 20")
        pause = debug.continue_(timeout_s=60)  # the watch resumes on the new coordinator
        assert (pause.task, pause.before) == ("generate_insights", True)
        assert debug.continue_(timeout_s=60) is None
        assert debug.result.outputs["generate_insights"] == expected_insight(20)


def test_release_tasks_refuses_what_it_cannot_release(pm):
    from xpipe import RequestRejectedError, RunNotFoundError
    from xpipe._proto import debug_pb2, debug_pb2_grpc

    def release(run_id: str, *tasks: str) -> list[str]:
        request = debug_pb2.ReleaseTasksRequest(run_id=run_id, tasks=tasks)
        reply = pm.client._call_on(debug_pb2_grpc.DebugServiceStub, lambda s: s.ReleaseTasks(request))
        return list(reply.released)

    with pytest.raises(RunNotFoundError, match="no live run 'nope'"):
        release("nope", "a")
    normal = pm.execute_pipeline("user_analytics", monitor=False, timeout_s=30)
    with pytest.raises(RequestRejectedError, match=r"FAILED_PRECONDITION: run \S+ is not a debug run"):
        release(normal.run_id, "extract_users")
    debug = pm.create_debug_session("user_analytics")
    debug.set_breakpoint("extract_users")
    assert debug.continue_(timeout_s=30).task == "extract_users"
    with pytest.raises(RequestRejectedError, match=r"no task 'extract'; known: analyze_behavior, extract_users, gen"):
        release(debug.run_id, "extract")
    assert release(debug.run_id, "generate_insights") == []  # not held: left alone
    debug.abort(timeout_s=30)


def test_a_coordinator_gone_past_the_connect_timeout_is_an_error_and_the_next_call_goes_on(tmp_path):
    from tests.harness import eventually
    from xpipe import CoordinatorUnavailableError

    args = ("--heartbeat-timeout-s", "2", "--heartbeat-interval-s", "0.25")
    with Cluster(tmp_path, workers=1, slots=1, coordinator_args=args) as c, \
            PipelineManager(coordinator=c.address, connect_timeout_s=1.0) as pm:  # fmt: skip
        register_user_analytics(pm, users=20)
        debug = pm.create_debug_session("user_analytics")
        debug.step_through_task("extract_users", timeout_s=30)
        c.coordinator.terminate()
        # The session's watch gives up after connect_timeout_s; so does a call.
        eventually(lambda: not debug._watcher.is_alive(), timeout_s=15, message="the watch never gave up")
        with pytest.raises(CoordinatorUnavailableError):
            debug.continue_(timeout_s=30)
        c.restart_coordinator()
        assert debug.continue_(timeout_s=60) is None  # watches again, releases what is held
        assert debug.result.outputs["generate_insights"] == expected_insight(20)


def test_inputs_this_process_cannot_decode_pause_and_say_why(pm):
    def make_worker_only_value():
        import sys
        import types

        module = types.ModuleType("xpipe_debug_test_worker_only")
        exec("class Secret:\n    pass\n", module.__dict__)
        sys.modules[module.__name__] = module  # importable on the worker only
        return module.Secret()

    p = Pipeline("undecodable")
    p.add_tasks([Task("make", make_worker_only_value), Task("use", lambda data: 1, depends_on=["make"])])
    debug = pm.create_debug_session(p)
    debug.set_breakpoint("use", condition="data is not None")
    pause = debug.continue_(timeout_s=30)
    assert (pause.task, pause.before) == ("use", True)
    assert pause.reason.startswith("breakpoint: the inputs of 'use' cannot be decoded here: cannot decode")
    assert "xpipe_debug_test_worker_only" in pause.reason
    # The run ends; its result holds that value too, which this process cannot decode.
    with pytest.raises(SerializationError, match="cannot decode result of task 'make'"):
        debug.continue_(timeout_s=30)
    assert (debug.state, debug.result) == ("finished", None)
