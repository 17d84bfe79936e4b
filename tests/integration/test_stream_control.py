"""The stream control plane on a real coordinator and worker: reports, status, stop, fencing,
checkpoints across a restart, restart as a new run, the CLI, and the worker's exported env.

The instances are :func:`tests.helpers_streamtasks.instance`, real long-lived tasks that
report through the real RPCs, as the runtime will.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tests import helpers_streamtasks as hs
from tests import helpers_tasks as ht
from tests.harness import Cluster, child_env, eventually
from xpipe import Pipeline, PipelineManager, Task
from xpipe._proto import pipeline_pb2, stream_pb2, stream_pb2_grpc
from xpipe.streams._labels import STAGES_LABEL, STREAM_LABEL, instance_task_name, stages_label

pytestmark = pytest.mark.integration

IMPORTS = ("tests.helpers_tasks", "tests.helpers_streamtasks")


def _start_stream(pm: PipelineManager, name: str, parallelism: int = 1, marker_dir: str = "", fail_first: bool = False,
                  namespace: str | None = None, fn=hs.instance, args: tuple | None = None) -> str:  # fmt: skip
    """Submit a one-stage stream run as ``start()`` will; returns its run id (known in advance)."""
    key = uuid.uuid4().hex
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex[:16]  # how the coordinator names a keyed submit
    p = Pipeline(name, namespace=namespace)
    for i in range(parallelism):
        task_args = args if args is not None else (name, "enrich", i, run_id, marker_dir, fail_first)
        p.add_task(Task(instance_task_name("enrich", i), fn, args=task_args, max_retries=5, retry_delay_s=0.1))
    spec = p.to_proto()
    spec.labels[STREAM_LABEL] = name
    spec.labels[STAGES_LABEL] = stages_label([{"name": "enrich", "input": "memory://in", "parallelism": parallelism}])
    request = pipeline_pb2.SubmitPipelineRequest(pipeline=spec, idempotency_key=key)
    assert pm.client._call(lambda p, a: p.SubmitPipeline(request, timeout=30)).run_id == run_id
    return run_id


def _stub(c: Cluster) -> tuple[grpc.Channel, stream_pb2_grpc.StreamServiceStub]:
    channel = grpc.insecure_channel(c.address)
    return channel, stream_pb2_grpc.StreamServiceStub(channel)


def test_an_instance_shows_on_its_worker_with_throughput_and_drains_on_stop(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        run_id = _start_stream(pm, "clicks")
        health = eventually(lambda: (h := pm.get_stream_health()).streams["clicks"].state == "running" and
                            h.streams["clicks"].stages[0].records_in_per_s > 0 and h, timeout_s=30,
                            message="clicks running with throughput")  # fmt: skip
        status = health.streams["clicks"]
        assert status.run_id == run_id and status.healthy and health.failed_streams == []
        stage = status.stages[0]
        (inst,) = stage.instances
        assert inst.task == "enrich[0]" and inst.task_state == "RUNNING" and inst.worker_name == "w0"
        assert inst.worker_id.startswith("w0-") and inst.state == "running"
        # ~10 records per 0.2 s report: ~50/s (loose: two cores shared with other tests).
        assert 10 < stage.records_in_per_s < 200 and stage.lag == 5 and stage.buffer_fill == pytest.approx(0.3)

        from xpipe.streams._handle import StreamHandle

        final = StreamHandle(pm.client, "clicks", run_id).stop(drain=True, timeout_s=20)
        assert final.state == "stopped" and final.healthy
        info = pm.client.get_run(run_id, include_results=True)
        assert info.state == "SUCCEEDED"
        assert info.task("enrich[0]").state == "SUCCEEDED" and info.task("enrich[0]").result == "drained"


def test_stop_of_an_unknown_stream_and_bad_reports_are_refused_by_name(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        run_id = _start_stream(pm, "orders")
        channel, stub = _stub(c)
        with channel:
            with pytest.raises(grpc.RpcError) as err:
                stub.StopStream(stream_pb2.StopStreamRequest(name="nope", drain=True))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in err.value.details()
            ref = stream_pb2.InstanceRef(stream="orders", stage="other", instance=0, run_id=run_id)
            with pytest.raises(grpc.RpcError) as err:
                stub.ReportInstance(stream_pb2.InstanceReport(ref=ref))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no stage 'other'" in err.value.details()
            ref = stream_pb2.InstanceRef(stream="orders", stage="enrich", instance=3, run_id=run_id)
            with pytest.raises(grpc.RpcError) as err:
                stub.ReportInstance(stream_pb2.InstanceReport(ref=ref))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance 3" in err.value.details()
            assert "parallelism is 1" in err.value.details()
            big = stream_pb2.StreamCheckpoint(ref=stream_pb2.InstanceRef(stream="orders", stage="enrich"),
                                              state=b"x" * (64 * 2**20 + 1), seq=1)  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                stub.SaveCheckpoint(big, timeout=60)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{64 * 2**20 + 1} bytes" in err.value.details() and "67108864" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                stub.GetStreams(stream_pb2.GetStreamsRequest(names=["missing"]))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'missing'" in err.value.details()
        pm.client.cancel(run_id)


def test_a_stale_attempt_is_fenced_and_restart_gives_a_new_run(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        run_id = _start_stream(pm, "fenced", marker_dir=str(markers), fail_first=True)
        eventually(lambda: pm.get_stream_health().streams["fenced"].state == "running", timeout_s=30)
        channel, stub = _stub(c)
        with channel:
            old = stream_pb2.InstanceRef(stream="fenced", stage="enrich", instance=0, run_id=run_id, attempt=1)
            assert stub.ReportInstance(stream_pb2.InstanceReport(ref=old, state="running")).fenced
            current = stream_pb2.InstanceRef(stream="fenced", stage="enrich", instance=0, run_id=run_id, attempt=2)
            assert not stub.ReportInstance(stream_pb2.InstanceReport(ref=current, state="running")).fenced

            new_ids = pm.restart_unhealthy_streams(["fenced"])
            assert set(new_ids) == {"fenced"} and new_ids["fenced"] != run_id
            eventually(lambda: pm.client.get_run(run_id).state == "CANCELLED", timeout_s=20)
            # The old run's instance is fenced now; the new run's status replaces it.
            assert stub.ReportInstance(stream_pb2.InstanceReport(ref=current, state="running")).fenced
            status = eventually(lambda: (s := pm.get_stream_health(["fenced"]).streams["fenced"]).run_id == new_ids["fenced"] and s,
                                timeout_s=20)  # fmt: skip
            assert status.stages[0].instances[0].task == "enrich[0]"
        pm.client.cancel(new_ids["fenced"])


def test_checkpoints_survive_a_coordinator_restart_and_stale_seqs_are_ignored(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        run_id = _start_stream(pm, "stateful")
        channel, stub = _stub(c)
        ref = stream_pb2.InstanceRef(stream="stateful", stage="enrich", instance=0, run_id=run_id)
        with channel:
            assert stub.LoadCheckpoint(stream_pb2.LoadCheckpointRequest(stream="stateful", stage="enrich")).seq == 0
            stub.SaveCheckpoint(stream_pb2.StreamCheckpoint(ref=ref, state=b"state-2", positions={0: "42"}, seq=2, at=1.5))
            stub.SaveCheckpoint(stream_pb2.StreamCheckpoint(ref=ref, state=b"stale", seq=1))  # ignored: older seq
        c.restart_coordinator()
        channel, stub = _stub(c)
        with channel:
            loaded = eventually(lambda: stub.LoadCheckpoint(stream_pb2.LoadCheckpointRequest(stream="stateful", stage="enrich")),
                                timeout_s=20)  # fmt: skip
            assert (loaded.state, dict(loaded.positions), loaded.seq) == (b"state-2", {0: "42"}, 2)
        # The restarted coordinator learnt the stream back from the resumed run.
        assert eventually(lambda: pm.get_stream_health().streams["stateful"].run_id, timeout_s=20) == run_id
        pm.client.cancel(run_id)


def test_xpipe_streams_json_and_table(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        run_id = _start_stream(pm, "views", parallelism=2)
        eventually(lambda: pm.get_stream_health().streams["views"].stages[0].records_in > 0, timeout_s=30)

        def cli(*args: str) -> str:
            return subprocess.run([sys.executable, "-c", "import sys; from xpipe._cli import main; sys.exit(main())", "streams", *args, "--coordinator", c.address],
                                  capture_output=True, text=True, env=child_env(), timeout=60, check=True).stdout  # fmt: skip

        (shown,) = json.loads(cli("--json"))
        assert shown["name"] == "views" and shown["run_id"] == run_id
        assert [i["task"] for i in shown["stages"][0]["instances"]] == ["enrich[0]", "enrich[1]"]
        table = cli("views")
        assert "views" in table and "enrich" in table and "2/2" in table
        assert "stopping" in cli("stop", "views", "--drain", "--timeout", "20")
        eventually(lambda: pm.client.get_run(run_id).state == "SUCCEEDED", timeout_s=30)


def test_worker_exports_what_a_task_needs_to_reach_the_coordinator(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=1, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("env")
        p.add_task(Task("env", hs.env_of_task, args=("XPIPE_COORDINATOR", "XPIPE_WORKER_ID", "XPIPE_TLS_CA")))
        env = pm.execute_pipeline(p, monitor=False, timeout_s=60).outputs["env"]
        assert env["XPIPE_COORDINATOR"] == c.address
        assert env["XPIPE_WORKER_ID"] == c.list_workers()[0].worker_id and env["XPIPE_WORKER_ID"].startswith("w0-")
        assert env["XPIPE_TLS_CA"] is None


def test_namespaces_scope_the_view_and_the_control_of_streams(tmp_path: Path) -> None:
    from tests.harness import SecureSetup

    setup = SecureSetup(tmp_path, principals={**SecureSetup.DEFAULT_PRINCIPALS, "teama": ["submitter"], "teamb": ["submitter"]},
                        namespaces={"teama": ["team-a"], "teamb": ["team-b"]})  # fmt: skip
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS, security=setup) as c:
        def manager(who: str) -> PipelineManager:
            return PipelineManager(coordinator=c.address, connect_timeout_s=10, **c.client_options(who))

        with manager("teama") as a, manager("teamb") as b, manager("admin") as admin:
            # Under TLS the worker hands its task processes the CA, certificate and key paths too.
            p = Pipeline("env", namespace="team-a")
            p.add_task(Task("env", hs.env_of_task, args=("XPIPE_TLS_CA", "XPIPE_TLS_CERT", "XPIPE_COORDINATOR")))
            env = a.execute_pipeline(p, monitor=False, timeout_s=60).outputs["env"]
            assert env["XPIPE_TLS_CA"] == setup.ca and env["XPIPE_TLS_CERT"] == setup.cert("worker-cert")[0]
            run_a = _start_stream(a, "stream-a", namespace="team-a", fn=ht.sleep, args=(120,))
            run_b = _start_stream(b, "stream-b", namespace="team-b", fn=ht.sleep, args=(120,))
            assert set(a.get_stream_health().streams) == {"stream-a"}
            assert a.get_stream_health().streams["stream-a"].namespace == "team-a"
            assert set(admin.get_stream_health().streams) == {"stream-a", "stream-b"}
            for call in (lambda: a.restart_unhealthy_streams(["stream-b"]),
                         lambda: a.client._call_on(stream_pb2_grpc.StreamServiceStub, lambda s: s.StopStream(
                             stream_pb2.StopStreamRequest(name="stream-b", drain=True), timeout=30))):  # fmt: skip
                with pytest.raises(Exception, match="namespace 'team-b'"):
                    call()
            assert b.get_stream_health().streams["stream-b"].run_id == run_b  # untouched
            admin.client.cancel(run_a)
            admin.client.cancel(run_b)


def test_a_stream_that_does_not_drain_in_time_is_cancelled(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        run_id = _start_stream(pm, "stuck", fn=ht.sleep, args=(120,))  # never reports, never drains
        eventually(lambda: pm.client.get_run(run_id).task("enrich[0]").state == "RUNNING", timeout_s=30)
        from xpipe.streams._handle import StreamHandle

        started = time.monotonic()
        final = StreamHandle(pm.client, "stuck", run_id).stop(drain=True, timeout_s=1.0)
        assert final.state == "stopped" and time.monotonic() - started < 10
        assert pm.client.get_run(run_id).state == "CANCELLED"
        assert "cancelling run" in c.coordinator.log_text()
        with pytest.raises(Exception, match="no stream pipeline 'ghost'"):
            pm.restart_unhealthy_streams(["ghost"])
