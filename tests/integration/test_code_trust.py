"""Code trust on real processes: signed assignments, ``--allow-code``, refused impostors.

Auth is off here, so every submitter is ``local`` (an admin holding ``code:pickle`` and
``code:command``); what a run may send is then decided by the workers' ``--allow-code``
and by the coordinator's signature on each run's principal. The last tests put a
real ``xpipe-worker`` in front of a gRPC server that plays a coordinator whose
assignments are unsigned, signed by another key, or tampered with: the worker must
refuse them without running their code.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import sys
import threading
from concurrent import futures
from pathlib import Path

import cloudpickle
import grpc
import pytest

from tests.harness import Cluster, Proc, eventually, format_logs, free_port
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2, worker_pb2_grpc
from xpipe.coordinator._trust import RunSigner
from tests.helpers_tasks import add


def _local_function():
    def times_ten(x: int) -> int:
        return x * 10

    return times_ten


#: A function the SDK can only ship cloudpickled (its qualname has ``<locals>``).
times_ten = _local_function()


# ---- real coordinator and workers ----------------------------------------------------


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory):
    """A coordinator with one worker that runs importable code and handlers only."""
    cluster = Cluster(tmp_path_factory.mktemp("trust"), workers=0)
    try:
        cluster.start()
        cluster.add_worker("importonly", 2, ["--allow-code", "import,handler"])
        yield cluster
    finally:
        cluster.stop()
        print(cluster.format_logs())


@pytest.fixture
def pm(restricted):
    manager = PipelineManager(coordinator=restricted.address)
    yield manager
    manager.close()


def test_a_worker_refusing_a_kind_never_gets_it_and_the_task_fails_naming_the_kind(pm, restricted) -> None:
    p = Pipeline("pickled-on-importonly")
    p.add_task(Task("ok", add, args=(1, 2)))
    p.add_task(Task("pickled", times_ten, args=(4,)))
    with pytest.raises(PipelineExecutionError) as info_:
        pm.execute_pipeline(p, monitor=False)
    exc = info_.value
    assert exc.error_type == "PICKLED_CODE_REFUSED" and exc.task == "pickled"
    assert "--allow-code without pickle" in str(exc)
    assert exc.result.tasks["ok"].status == "succeeded"

    p = Pipeline("command-on-importonly")
    p.add_task(Task.command("cmd", ["echo", "hi"]))
    with pytest.raises(PipelineExecutionError) as info_:
        pm.execute_pipeline(p, monitor=False)
    assert info_.value.task == "cmd" and "refuses command code" in str(info_.value)
    # Neither was ever sent to the worker: it refused nothing itself.
    assert "refused attempt" not in restricted.workers["importonly"].log_text()


def test_a_pickled_task_waits_for_a_worker_that_runs_it_and_never_lands_elsewhere(pm, restricted) -> None:
    p = Pipeline("waits-for-pickle")
    p.add_task(Task("pickled", times_ten, args=(5,)))
    p.configure_placement(wait_for_resources_s=60)
    run_id = pm.submit(p)
    eventually(lambda: pm.get_run(run_id).tasks["pickled"].status == "ready", message="pickled task waits")
    full = restricted.add_worker("full", 2)
    try:
        result = pm.wait(run_id, timeout_s=30)
        assert result.outputs["pickled"] == 50 and result.tasks["pickled"].worker == "full"
        # Both workers now: pickled tasks and commands go to "full" only, imports anywhere.
        p = Pipeline("mixed")
        for i in range(6):
            p.add_task(Task(f"pickled{i}", times_ten, args=(i,)))
            p.add_task(Task(f"import{i}", add, args=(i, 1)))
        p.add_task(Task.command("cmd", ["echo", "hi"]))
        result = pm.execute_pipeline(p, monitor=False)
        assert {result.tasks[f"pickled{i}"].worker for i in range(6)} == {"full"}
        assert result.tasks["cmd"].worker == "full"
        assert [result.outputs[f"pickled{i}"] for i in range(6)] == [0, 10, 20, 30, 40, 50]
    finally:
        full.terminate()
    assert "refused attempt" not in restricted.workers["importonly"].log_text()


# ---- a real worker in front of an impostor coordinator -----------------------------------


class Impostor(worker_pb2_grpc.WorkerServiceServicer):
    """Plays a coordinator: registers the worker with ``trusted``'s key, then sends ``batch``.

    What the worker answers (TaskEvents with an outcome) lands in :attr:`outcomes`.
    """

    def __init__(self, trusted: RunSigner, batch: worker_pb2.AssignmentBatch):
        self.trusted, self.batch = trusted, batch
        self.outcomes: queue.Queue[worker_pb2.TaskEvent] = queue.Queue()
        self.done = threading.Event()

    def Connect(self, request_iterator, context):
        first = next(request_iterator)
        assert first.WhichOneof("body") == "register"
        yield worker_pb2.CoordinatorMessage(registered=worker_pb2.Registered(
            coordinator_id="impostor", heartbeat_interval_s=1.0, prefetch=4,
            signing_key=self.trusted.public_key, signing_key_id=self.trusted.key_id,
        ))  # fmt: skip
        yield worker_pb2.CoordinatorMessage(assignments=self.batch)

        def read() -> None:
            for message in request_iterator:
                if message.WhichOneof("body") == "events":
                    for event in message.events.events:
                        if event.WhichOneof("kind") in ("succeeded", "failed"):
                            self.outcomes.put(event)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.done.wait(60)


def _touch_code(marker: Path) -> tuple[str, bytes]:
    """Pickled code whose only effect is to create ``marker``: proof that it ran."""
    data = cloudpickle.dumps(functools.partial(Path.touch, marker))
    return hashlib.sha256(data).hexdigest(), data


def _assignment(run_id: str, code_hash: str, principal: pb.RunPrincipal | None) -> worker_pb2.Assignment:
    a = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id=run_id, task="touch", attempt=1))
    a.task.name = "touch"
    a.task.python.code_hash = code_hash
    if principal is not None:
        a.principal.CopyFrom(principal)
    return a


def _run_against_impostor(tmp_path: Path, batch: worker_pb2.AssignmentBatch, trusted: RunSigner,
                          worker_args: tuple[str, ...] = ()) -> dict[str, worker_pb2.TaskEvent]:  # fmt: skip
    impostor = Impostor(trusted, batch)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(impostor, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    worker = Proc("worker", [
        sys.executable, "-m", "xpipe.worker", "--coordinator", f"127.0.0.1:{port}", "--name", "victim", "--slots", "2",
        *worker_args,
    ], log_dir=tmp_path / "logs", cwd=tmp_path)  # fmt: skip
    outcomes: dict[str, worker_pb2.TaskEvent] = {}
    try:
        def all_answered() -> bool:
            while not impostor.outcomes.empty():
                event = impostor.outcomes.get()
                outcomes[event.attempt.run_id] = event
            return len(outcomes) == len(batch.assignments)

        eventually(all_answered, timeout_s=30, message=f"worker answered every assignment\n{format_logs([worker])}")
    finally:
        impostor.done.set()
        worker.terminate()
        server.stop(grace=None)
    return outcomes


def test_the_worker_refuses_unsigned_foreign_and_tampered_principals_without_running_them(tmp_path: Path) -> None:
    trusted, other = RunSigner.generate(), RunSigner.generate()
    markers = {name: tmp_path / f"ran-{name}" for name in ("unsigned", "foreign", "tampered", "good")}
    batch = worker_pb2.AssignmentBatch()
    tampered = trusted.sign("sam", ("code:command",), "tampered")
    tampered.grants.append("code:pickle")  # sam never held it
    principals = {
        "unsigned": None,
        "foreign": other.sign("local", ("code:pickle",), "foreign"),  # a coordinator this worker never met
        "tampered": tampered,
        "good": trusted.sign("local", ("code:pickle",), "good"),
    }
    for run_id, principal in principals.items():
        code_hash, data = _touch_code(markers[run_id])
        batch.code.add(code_hash=code_hash, data=data)
        batch.assignments.append(_assignment(run_id, code_hash, principal))
    outcomes = _run_against_impostor(tmp_path, batch, trusted)
    assert outcomes["good"].WhichOneof("kind") == "succeeded" and markers["good"].exists()  # the control
    expected = {
        "unsigned": "carries no signed principal",
        "foreign": "signed with key",
        "tampered": "bad signature",
    }
    for run_id, words in expected.items():
        event = outcomes[run_id]
        assert event.WhichOneof("kind") == "failed", (run_id, event)
        assert words in event.failed.error.message and event.failed.error.non_retryable, (run_id, event)
        assert not markers[run_id].exists(), f"{run_id}: the refused code ran"


def test_a_restricted_worker_refuses_a_signed_kind_it_does_not_allow(tmp_path: Path) -> None:
    trusted = RunSigner.generate()
    marker = tmp_path / "ran"
    code_hash, data = _touch_code(marker)
    batch = worker_pb2.AssignmentBatch(code=[pb.CodeBlob(code_hash=code_hash, data=data)])
    batch.assignments.append(_assignment("r1", code_hash, trusted.sign("local", ("code:pickle",), "r1")))
    cmd = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id="r2", task="cmd", attempt=1))
    cmd.task.name = "cmd"
    cmd.task.command.argv.extend(["touch", str(marker)])
    cmd.principal.CopyFrom(trusted.sign("local", ("code:command",), "r2"))
    batch.assignments.append(cmd)
    outcomes = _run_against_impostor(tmp_path, batch, trusted, ("--allow-code", "import,handler"))
    assert outcomes["r1"].failed.error.error_type == "PICKLED_CODE_REFUSED"
    assert "--allow-code import,handler" in outcomes["r1"].failed.error.message
    assert "runs command code, which this worker refuses" in outcomes["r2"].failed.error.message
    assert not marker.exists()


def test_bad_allow_code_stops_the_worker_naming_the_kind(tmp_path: Path) -> None:
    worker = Proc("worker", [sys.executable, "-m", "xpipe.worker", "--coordinator", "127.0.0.1:1", "--allow-code",
                             "import,pickles"], log_dir=tmp_path, cwd=tmp_path)  # fmt: skip
    assert worker.wait(30) == 2
    assert "--allow-code: unknown kind 'pickles'" in worker.log_text()


# ---- the signing key across coordinator restarts ----------------------------------------


def _write_key(path: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return path


def test_a_run_resumed_by_a_coordinator_with_another_key_is_signed_again(tmp_path: Path) -> None:
    """The first coordinator signs with the key file; the restarted one makes a key of its own."""
    key = _write_key(tmp_path / "signing.pem")
    with Cluster(tmp_path, workers=0, coordinator_args=["--signing-key-file", str(key)]) as cluster:
        with PipelineManager(coordinator=cluster.address) as pm:
            p = Pipeline("resumed")
            p.add_task(Task("pickled", times_ten, args=(7,)))
            p.configure_placement(wait_for_resources_s=120)
            run_id = pm.submit(p)  # no worker yet: it waits, stored with key 1's signature
        cluster.coordinator_args = ()
        cluster.restart_coordinator(wait_for_workers=False)
        cluster.add_worker("w0", 1)  # registers with the new coordinator: trusts key 2 only
        with PipelineManager(coordinator=cluster.address) as pm:
            result = pm.wait(run_id, timeout_s=30)
        assert result.outputs["pickled"] == 70
        assert "refused attempt" not in cluster.workers["w0"].log_text()


def test_a_bad_signing_key_file_stops_the_coordinator_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    coordinator = Proc("coordinator", [sys.executable, "-m", "xpipe.coordinator", "--listen", f"127.0.0.1:{free_port()}",
                                       "--data-dir", str(tmp_path / "data"), "--signing-key-file", str(bad)],
                       log_dir=tmp_path, cwd=tmp_path)  # fmt: skip
    assert coordinator.wait(30) != 0
    assert f"--signing-key-file {bad}: not an unencrypted PEM private key" in coordinator.log_text()
