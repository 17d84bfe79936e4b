"""The seed's pipelines end to end on real coordinator and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import psutil
import pytest

from tests import helpers_tasks as ht
from tests.harness import Cluster, child_env, eventually
from xpipe import (
    DataFlow,
    Pipeline,
    PipelineExecutionError,
    PipelineManager,
    PipelineValidationError,
    SerializationError,
    Task,
    task,
)
from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc


def extract_data_func():
    return [{"id": i, "v": i * 1.5} for i in range(20)]


def transform_data_func(rows):
    return [dict(r, v2=r["v"] * 2) for r in rows]


def load_data_func(rows):
    return {"rows": len(rows), "total": sum(r["v2"] for r in rows)}


@pytest.fixture
def pm(cluster):
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


def seed_etl() -> Pipeline:
    pipeline = Pipeline("data_processing")
    extract_task = Task("extract", extract_data_func)
    transform_task = Task("transform", transform_data_func, depends_on=[extract_task])
    load_task = Task("load", load_data_func, depends_on=[transform_task])
    pipeline.add_tasks([extract_task, transform_task, load_task])
    return pipeline


def test_seed_etl_runs_on_workers(pm):
    result = pm.execute_pipeline(seed_etl(), parallel=True, monitor=True, retry_on_failure=True)
    assert result.status == "succeeded" and result.succeeded
    assert result.outputs["load"] == {"rows": 20, "total": sum(i * 3.0 for i in range(20))}
    for name in ("extract", "transform", "load"):
        info = result.tasks[name]
        assert info.status == "succeeded" and info.attempts == 1
        assert info.worker in ("w0", "w1")
        assert info.duration_s is not None and info.duration_s >= 0
    # Dependencies ran in order.
    t = result.tasks
    assert t["extract"].finished_at <= t["transform"].started_at <= t["transform"].finished_at <= t["load"].started_at


def test_fan_out_fan_in_of_300_tasks_runs_in_worker_processes(pm, cluster):
    p = Pipeline("fan")
    root = Task("root", ht.echo, args=(1,))
    leaves = [Task(f"leaf{i}", ht.add, depends_on=[root], args=(i,)) for i in range(300)]
    sink = Task("sink", ht.add, depends_on=leaves)
    p.add_tasks([root, *leaves, sink])
    result = pm.execute_pipeline(p, monitor=False)
    assert result.outputs["sink"] == sum(1 + i for i in range(300))
    workers = {result.tasks[f"leaf{i}"].worker for i in range(300)}
    assert workers == {"w0", "w1"}  # spread over both workers
    pids = pm.execute_pipeline(_pid_pipeline(8), monitor=False).outputs
    worker_pids = {w.pid for w in cluster.workers.values()}
    assert not set(pids.values()) & (worker_pids | {os.getpid()})  # not in the daemon, not here


def _pid_pipeline(n: int) -> Pipeline:
    p = Pipeline("pids")
    p.add_tasks([Task(f"p{i}", ht.pid) for i in range(n)])
    return p


def test_data_passing_positional_args_kwargs_and_dataflow(pm):
    p = Pipeline("data")
    a = Task("a", ht.echo, args=({"x": 1, "y": [1, 2]},))
    b = Task("b", ht.echo, args=(10,))
    c = Task("c", ht.describe, depends_on=[a, b], args=("extra",),
             kwargs={"y": DataFlow(a, key="y"), "whole": DataFlow("b"), "plain": 5})  # fmt: skip
    p.add_tasks([a, b, c])
    out = pm.execute_pipeline(p, monitor=False).outputs["c"]
    assert out["args"] == [{"x": 1, "y": [1, 2]}, 10, "extra"]
    assert out["kwargs"] == {"y": [1, 2], "whole": 10, "plain": 5}


def test_nested_decorator_form_travels_by_cloudpickle(pm):
    @pm.pipeline("user_analytics")
    def create_user_analytics_pipeline():
        """Create user analytics pipeline with decorators."""

        @task("extract_users")
        def extract_user_data():
            return [{"name": "ana", "visits": 3}, {"name": "bo", "visits": 9}]

        @task("analyze_behavior", depends_on=["extract_users"])
        def analyze_user_behavior(user_data):
            return max(user_data, key=lambda u: u["visits"])

        @task("generate_insights", depends_on=["analyze_behavior"])
        def generate_insights(behavior_data):
            return f"top: {behavior_data['name']}"

        return [extract_user_data, analyze_user_behavior, generate_insights]

    result = pm.execute_pipeline("user_analytics", monitor=False)
    assert result.outputs["generate_insights"] == "top: bo"
    spec = create_user_analytics_pipeline.to_proto()
    assert len(spec.code) == 3 and all(t.python.code_hash for t in spec.tasks)


def test_failing_task_error_and_traceback_reach_the_client(pm):
    p = Pipeline("failing")
    bad = Task("bad", ht.fail_with_value_error, args=("the input was negative",))
    after = Task("after", ht.echo, depends_on=[bad])
    other = Task("other", ht.echo, args=(7,))
    p.add_tasks([bad, after, other])
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    exc = info.value
    assert exc.error_type == "TASK_FAILURE" and exc.task == "bad"
    assert "the input was negative" in str(exc) and "ValueError" in str(exc)
    assert "fail_with_value_error" in exc.traceback
    assert exc.result.tasks["after"].status == "upstream_failed"
    assert exc.result.outputs == {"other": 7}  # the independent branch finished
    result = pm.execute_pipeline(p, monitor=False, raise_on_failure=False)
    assert result.status == "failed"


def test_unserialisable_result_fails_the_task_clearly(pm):
    p = Pipeline("unpicklable")
    p.add_task(Task("u", ht.unpicklable))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    assert "result of task 'u'" in info.value.task_error


def test_unserialisable_argument_is_refused_before_submit(pm):
    import threading

    p = Pipeline("bad-arg")
    p.add_task(Task("t", ht.echo, args=(threading.Lock(),)))
    with pytest.raises(SerializationError, match="arguments of task 't'"):
        pm.submit(p)


def test_cancel_kills_running_tasks_and_marks_the_rest(pm, tmp_path):
    p = Pipeline("slow")
    pid_file = tmp_path / "pid"
    first = Task("first", ht.spawn_then_sleep, args=(str(pid_file), 60))
    p.add_tasks([first, Task("second", ht.echo, depends_on=[first], args=(1,))])
    run_id = pm.submit(p)
    eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout_s=20, message="task never started")
    sleeper = int(pid_file.read_text())
    assert pm.cancel(run_id) is True
    with pytest.raises(PipelineExecutionError) as info:
        pm.wait(run_id, timeout_s=20)
    assert info.value.error_type == "CANCELLED"
    assert {t.status for t in info.value.result.tasks.values()} == {"cancelled"}
    eventually(lambda: not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE,
               timeout_s=10, message="the cancelled task's process is still alive")  # fmt: skip
    assert pm.cancel(run_id) is False


def test_worker_joining_mid_run_takes_work(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("long")
        p.add_tasks([Task(f"s{i}", ht.sleep, args=(0.1,)) for i in range(40)])
        run_id = pm.submit(p)
        c.add_worker("late", slots=2)
        result = pm.wait(run_id, timeout_s=60)
        assert {t.worker for t in result.tasks.values()} == {"w0", "late"}


def test_handler_and_command_tasks(tmp_path):
    # Only "resizer" imports tests.helpers_tasks, so only it serves the "double" handler.
    with Cluster(tmp_path, workers=1, slots=4, imports=()) as c:
        c.add_worker("resizer", slots=1, extra_args=("--import", "tests.helpers_tasks"))
        with PipelineManager(coordinator=c.address) as pm:
            p = Pipeline("poly")
            p.add_tasks([Task.handler(f"d{i}", "double", args=(i,)) for i in range(6)])
            p.add_task(Task.command("cmd", [sys.executable, "-c", "import sys; print('hi'); sys.exit(0)"]))
            result = pm.execute_pipeline(p, monitor=False)
            assert [result.outputs[f"d{i}"] for i in range(6)] == [0, 2, 4, 6, 8, 10]
            assert {result.tasks[f"d{i}"].worker for i in range(6)} == {"resizer"}
            assert result.outputs["cmd"]["stdout"].strip() == "hi" and result.outputs["cmd"]["exit_code"] == 0
            bad = Pipeline("badcmd")
            bad.add_task(Task.command("exit3", [sys.executable, "-c", "import sys; sys.stderr.write('nope'); sys.exit(3)"]))
            with pytest.raises(PipelineExecutionError, match="exited with code 3"):
                pm.execute_pipeline(bad, monitor=False)


def test_polyglot_submit_is_validated_by_the_coordinator(cluster):
    """A client that skips the SDK still gets clear errors, and the coordinator keeps serving."""
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        spec = common_pb2.PipelineSpec(name="cyclic")
        for name, dep in (("a", "c"), ("b", "a"), ("c", "b")):
            spec.tasks.add(name=name, depends_on=[dep]).command.argv.append("true")
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cycle" in info.value.details() and all(n in info.value.details() for n in "abc")

        spec = common_pb2.PipelineSpec(name="unknown-dep")
        spec.tasks.add(name="a", depends_on=["ghost"]).command.argv.append("true")
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ghost" in info.value.details()

        for empty in (common_pb2.PipelineSpec(name="empty"), common_pb2.PipelineSpec()):
            with pytest.raises(grpc.RpcError) as info:
                stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=empty))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Malformed bytes: the server cannot parse the request.
        raw = channel.unary_unary("/xpipe.v1.PipelineService/SubmitPipeline")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in info.value.details()

        # A JSON-codec command pipeline, as another language would send it, still runs.
        spec = common_pb2.PipelineSpec(name="polyglot")
        spec.tasks.add(name="hello").command.argv.extend(["echo", "hello"])
        run_id = stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec)).run_id
        events = list(stub.WatchRun(pipeline_pb2.WatchRunRequest(run_id=run_id), timeout=30))
        assert events[-1].summary.state == common_pb2.RUN_SUCCEEDED
        got = stub.GetTaskResult(pipeline_pb2.GetTaskResultRequest(run_id=run_id, task="hello"))
        assert got.result.codec == common_pb2.CODEC_JSON and json.loads(got.result.data)["stdout"] == "hello\n"


def test_oversized_message_is_refused_and_coordinator_keeps_serving(cluster):
    options = [("grpc.max_send_message_length", 512 * 1024 * 1024)]
    with grpc.insecure_channel(cluster.address, options=options) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        spec = common_pb2.PipelineSpec(name="huge")
        t = spec.tasks.add(name="t")
        t.command.argv.append("true")
        t.args.data = b"x" * (300 * 1024 * 1024)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with PipelineManager(coordinator=cluster.address) as pm:
        assert pm.execute_pipeline(seed_etl(), monitor=False).succeeded


def test_sdk_validation_errors(pm):
    p = Pipeline("cyc")
    p.add_tasks([Task("a", ht.echo, depends_on=["b"]), Task("b", ht.echo, depends_on=["a"])])
    with pytest.raises(PipelineValidationError, match="cycle"):
        pm.execute_pipeline(p)
    with pytest.raises(PipelineValidationError):
        pm.execute_pipeline(Pipeline("empty"))
    assert pm.list_runs() == []  # nothing was submitted


def test_coordinator_restart_mid_run_resumes_and_client_rides_through(tmp_path):
    with Cluster(tmp_path, workers=2, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("resume")
        prev = None
        for i in range(12):
            # each link sleeps for the seconds its upstream returned (0.1)
            t = Task(f"s{i}", ht.sleep, depends_on=[prev]) if prev else Task("s0", ht.sleep, args=(0.1,))
            p.add_task(t)
            prev = t
        run_id = pm.submit(p)
        eventually(lambda: pm.get_run(run_id).tasks["s3"].status == "succeeded", timeout_s=30)
        c.coordinator.kill()
        c.restart_coordinator()
        result = pm.wait(run_id, timeout_s=60)
        assert result.succeeded and all(t.attempts >= 1 for t in result.tasks.values())
        assert result.tasks["s0"].attempts == 1  # finished before the crash: not run again


def test_cli_workers_runs_status_and_run(cluster, tmp_path):
    env = child_env({"XPIPE_COORDINATOR": cluster.address})
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "workers", "--json"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    workers = json.loads(out.stdout)
    assert {w["name"] for w in workers} == {"w0", "w1"}
    for w in workers:
        assert {"name", "state", "slots", "resources", "labels", "last_heartbeat"} <= set(w)
        assert w["state"] in ("ready", "busy") and w["slots"] == 2 and w["resources"]["cpu"] >= 1
    script = tmp_path / "flow.py"
    script.write_text(
        "from xpipe import Pipeline, Task\n"
        "def one():\n    return 1\n"
        "def plus(x):\n    return x + 41\n"
        "p = Pipeline('cli')\n"
        "a = Task('one', one)\n"
        "p.add_tasks([a, Task('answer', plus, depends_on=[a])])\n"
    )
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "run", f"{script}:p", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    ran = json.loads(out.stdout)
    assert ran["status"] == "succeeded" and ran["outputs"]["answer"] == 42
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "status", ran["run_id"], "--json"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(out.stdout)["tasks"]["answer"]["status"] == "succeeded"
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "runs", "--json"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert ran["run_id"] in {r["run_id"] for r in json.loads(out.stdout)}
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "status", "nope"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "nope" in out.stderr


def test_embedded_default_runs_the_same_pipelines():
    started = time.monotonic()
    with PipelineManager(workers=2, slots_per_worker=1) as pm:
        assert pm.address.startswith("127.0.0.1:")
        result = pm.execute_pipeline(seed_etl(), monitor=False)
        assert result.outputs["load"]["rows"] == 20
        fan = Pipeline("fan")
        fan.add_tasks([Task(f"t{i}", ht.add, args=(i, 1)) for i in range(200)])
        assert sum(pm.execute_pipeline(fan, monitor=False).outputs.values()) == sum(range(1, 201))
        local = pm._local
        procs = list(local._procs)
    assert time.monotonic() - started < 60
    assert all(p.poll() is not None for p in procs)  # close() stopped every process


def test_data_quality_failure_carries_its_report(pm):
    p = Pipeline("quality")
    p.add_task(Task("validate", ht.fail_with_quality_report, args=(12,)))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    assert info.value.error_type == "DATA_QUALITY_FAILURE"
    assert info.value.quality_report.details == {"bad_rows": 12, "checks": ["id", "amount"]}
    assert info.value.quality_report.suggested_fixes == []
    assert "12 rows failed validation" in str(info.value)


def test_big_results_travel_through_the_artifact_store(pm, cluster):
    blobs = [os.urandom(1 << 20) for _ in range(3)]  # incompressible: stays 1 MiB encoded
    p = Pipeline("big")
    makers = [Task(f"m{i}", ht.echo, args=(blob,)) for i, blob in enumerate(blobs)]
    p.add_tasks([*makers, Task("sizes", ht.describe, depends_on=makers)])
    result = pm.execute_pipeline(p, monitor=False)
    assert result.outputs["m2"] == blobs[2]  # the client gets the bytes, not a reference
    assert result.outputs["sizes"]["args"] == blobs
    stored = list((cluster.data_dir / "artifacts" / result.run_id).iterdir())
    assert sorted(f.name for f in stored) == ["m0.1", "m1.1", "m2.1", "sizes.1"]


def test_submit_and_watch_in_one_call(cluster):
    from xpipe import Client

    with Client(cluster.address) as client:
        spec = common_pb2.PipelineSpec(name="one-call")
        spec.tasks.add(name="hello").command.argv.extend(["echo", "hi"])
        events = list(client.submit_and_watch(spec, summary_only=True, results_on_end=True))
        assert events[0].summary.run_id and events[-1].summary.state == "SUCCEEDED"
        (hello,) = events[-1].changed
        assert hello.name == "hello" and hello.has_result and hello.result["stdout"].strip() == "hi"
        bad = common_pb2.PipelineSpec(name="cyclic")
        for name, dep in (("a", "b"), ("b", "a")):
            bad.tasks.add(name=name, depends_on=[dep]).command.argv.append("true")
        with pytest.raises(PipelineValidationError, match="cycle"):
            list(client.submit_and_watch(bad))


def test_big_results_stay_inline_where_the_artifact_dir_is_missing(tmp_path):
    missing = tmp_path / "not-mounted-here"
    with Cluster(tmp_path, workers=1, slots=1, worker_args=("--artifact-dir", str(missing))) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        blob = os.urandom(1 << 20)
        p = Pipeline("inline-big")
        first = Task("make", ht.echo, args=(blob,))
        p.add_tasks([first, Task("use", ht.echo, depends_on=[first])])
        result = pm.execute_pipeline(p, monitor=False)
        assert result.outputs["use"] == blob
        assert not missing.exists()  # the worker did not create a directory nobody reads
        assert not (c.data_dir / "artifacts" / result.run_id).exists()
