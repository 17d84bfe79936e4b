"""The Kubernetes manifests' settings, run for real on loopback: no cluster, the same processes.

``deploy/kubernetes/config.yaml`` holds one ``xpipe.toml``; its keys are the binaries' flags.
Here a real etcd, a coordinator and a worker start with exactly those settings, except for
what only a cluster has: addresses become free loopback ports and paths become temporary
directories. Then the test checks what the pods rely on:
- each gRPC probe of the coordinator StatefulSet answers SERVING for the service it names;
- the dashboard answers;
- a worker named like a pod registers and runs a task;
- on SIGTERM the worker lets its running task finish and exits well within
  ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import helpers_tasks as ht
from tests.harness import EtcdServer, Proc, StopWaiting, eventually, free_port
from tests.helpers_kubernetes import config_toml, grpc_probes, pod_spec, resolve_by_hand
from xpipe import Pipeline, PipelineManager, Task

POD_NAME = "xpipe-worker-5d8f7-abcde"


def _argv(table: dict, overrides: dict) -> list[str]:
    """``--some-flag VALUE`` for each key of a config table (a true bool is a bare switch)."""
    argv: list[str] = []
    for key, value in {**table, **overrides}.items():
        if isinstance(value, dict) or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def test_the_manifests_settings_serve_probes_and_drain_on_sigterm(tmp_path: Path, etcd: EtcdServer) -> None:
    docs = resolve_by_hand()
    config = config_toml(docs)
    address = f"127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
    coordinator_argv = [sys.executable, "-m", "xpipe.coordinator", *_argv(config["coordinator"], {
        "listen": address, "http_listen": http, "metrics_listen": f"127.0.0.1:{free_port()}",
        "store": f"etcd://{etcd.endpoint}", "data_dir": tmp_path / "data", "artifact_dir": tmp_path / "artifacts",
    }), "--advertise", address]  # fmt: skip
    worker_spec = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "xpipe-worker")
    period_s = pod_spec(worker_spec)["terminationGracePeriodSeconds"]
    worker_argv = [sys.executable, "-m", "xpipe.worker", *_argv(config["worker"], {
        "coordinator": address, "artifact_dir": tmp_path / "artifacts", "cache_dir": tmp_path / "cache",
        "metrics_listen": f"127.0.0.1:{free_port()}",
    }), "--name", POD_NAME, "--import", "tests.helpers_tasks"]  # fmt: skip
    logs = tmp_path / "logs"
    probes = grpc_probes(docs)
    assert {which for _, which, _ in probes} == {"startupProbe", "livenessProbe", "readinessProbe"}
    coordinator = Proc("coordinator", coordinator_argv, log_dir=logs)
    worker = None
    try:
        def serving(service: str) -> bool:
            if not coordinator.alive():
                raise StopWaiting(f"coordinator exited with {coordinator.returncode}:\n{coordinator.log_tail()}")
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                   timeout=1.0)  # fmt: skip
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        for _, which, action in probes:
            service = action.get("service", "")
            eventually(lambda: serving(service), timeout_s=30, message=f"{which} for service {service!r} never SERVING")
        with urllib.request.urlopen(f"http://{http}/", timeout=5) as reply:
            assert reply.status == 200

        worker = Proc("worker", worker_argv, log_dir=logs)
        with PipelineManager(coordinator=address) as pm:
            p = Pipeline("k8s-drain")
            p.add_tasks([Task("slow", ht.sleep, args=(2.0,))])
            run_id = pm.submit(p)
            eventually(lambda: pm.get_run(run_id).tasks["slow"].status == "running", timeout_s=30,
                       message="the task never ran on the pod-named worker")  # fmt: skip
            assert pm.get_run(run_id).tasks["slow"].worker == POD_NAME
            signalled = time.monotonic()
            worker.stop_signal(signal.SIGTERM)  # what the kubelet sends when the pod stops
            assert worker.wait(timeout_s=period_s) == 0
            drained_s = time.monotonic() - signalled
            # Finished in the grace, not requeued (no other worker could run it again). The
            # worker exits once its outcome is sent; the coordinator records it a moment later.
            eventually(lambda: pm.get_run(run_id).tasks["slow"].status == "succeeded", timeout_s=10,
                       message="the drained task was not recorded as succeeded")  # fmt: skip
            print(f"SIGTERM to exit with a 2 s task running: {drained_s:.2f}s (pod grace {period_s}s)")
    finally:
        if worker is not None:
            worker.terminate()
        coordinator.terminate()
