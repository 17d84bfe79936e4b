"""The audit log and lineage with auth on (tokens over mTLS) and encryption at rest, real processes.

Who is recorded is the authenticated principal (never twice, never ``local``); a refusal
is recorded with its status; a marked task's data access names the run's signed submitter;
and a big result sealed in the artifact store is hashed as the plain bytes clients read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from xpipe import Pipeline, PipelineManager, Task, audit_data_access
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc
from xpipe.errors import PermissionDeniedError
from xpipe.security._keys import create_keyring

from tests import helpers_tasks as ht
from tests.harness import Cluster, SecureSetup, eventually


def test_audit_with_auth_and_encryption_at_rest(tmp_path: Path) -> None:
    key = tmp_path / "keys.json"
    create_keyring(key)
    flag = ("--encryption-key-file", str(key))
    setup = SecureSetup(tmp_path)
    with Cluster(tmp_path, workers=1, security=setup, coordinator_args=flag, worker_args=flag) as c:
        with PipelineManager(coordinator=c.address, **c.client_options("submitter")) as pm:
            p = Pipeline("secure-audited")
            big = os.urandom(300 * 1024)  # incompressible, past the artifact threshold: a sealed artifact
            a = Task("a", ht.echo, args=(big,))
            p.add_tasks([a, audit_data_access(Task("b", ht.echo, depends_on=[a]))])
            p.enable_lineage()
            run_id = pm.execute_pipeline(p, monitor=False, timeout_s=60).run_id
            assert pm.client.task_result(run_id, "b").value == big
        with PipelineManager(coordinator=c.address, **c.client_options("viewer")) as viewer, \
                pytest.raises(PermissionDeniedError):  # fmt: skip
            viewer.cancel(run_id)
        with PipelineManager(coordinator=c.address, **c.client_options("admin")) as admin:
            log = eventually(lambda: [e for e in admin.get_audit() if e.action == "task.data_access"] and admin.get_audit(),
                             message="the data access in the audit log")  # fmt: skip
            graph = admin.get_lineage(run_id)
        seen = [(e.principal, e.action.rpartition("/")[2], e.target, e.outcome) for e in log]
        assert ("submitter", "WatchRun", run_id, "ok") in seen, seen
        assert ("worker-cert", "Connect", "", "ok") in seen, seen  # with auth on, a worker's stream has a name
        assert ("submitter", "GetTaskResult", f"{run_id}/b", "ok") in seen, seen  # the run and the task, as with auth off
        assert ("submitter", "task.data_access", f"{run_id}/b", "ok") in seen, seen
        refused = [e for e in log if e.outcome == "refused"]
        assert [(e.principal, e.action.rpartition("/")[2]) for e in refused] == [("viewer", "CancelRun")]
        assert "PERMISSION_DENIED" in refused[0].detail["status"] and "run:cancel" in refused[0].detail["status"]
        assert not any(e.principal == "local" for e in log), "auth is on: nobody is local"
        reads = [e for e in log if e.action.endswith("/GetTaskResult")]
        assert len(reads) == 1, "recorded twice (by the guard and by the auth-off wrapper)"

        # The artifact on disk is sealed; its hash is that of the plain bytes GetTaskResult serves.
        assert graph.node("a").output.artifact_ref.endswith(".xpe")
        with setup.channel(c.address, token=setup.tokens["admin"]) as channel:
            info = pipeline_pb2_grpc.PipelineServiceStub(channel).GetTaskResult(
                pipeline_pb2.GetTaskResultRequest(run_id=run_id, task="a"), timeout=30
            )
        plain = hashlib.sha256(info.result.data).hexdigest()
        assert graph.node("a").output.sha256 == plain
        access = next(e for e in log if e.action == "task.data_access")
        assert json.loads(access.detail["inputs"])[0]["sha256"] == plain
