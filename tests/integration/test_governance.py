"""Retention, forgetting a subject and log redaction, end to end on real processes.

Runs are made "old" honestly: the coordinator's ``--retention-days`` is a fraction of a day
(a few seconds), and the tests wait (``eventually``) until ``xpipe gc --dry-run`` lists the
runs. An orphaned artifact directory is aged with ``os.utime`` (its age is its mtime).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from xpipe import Pipeline, PipelineManager, RunNotFoundError, Task, task
from xpipe._proto import common_pb2, governance_pb2
from xpipe._proto.governance_pb2_grpc import GovernanceServiceStub
from xpipe.errors import RequestRejectedError
from xpipe.security import REDACTED, comply_with_gdpr, ensure_privacy_compliance

from tests import helpers_privacy as hp
from tests import helpers_tasks as ht
from tests.harness import Cluster, EtcdServer, eventually

IMPORTS = ("tests.helpers_tasks", "tests.helpers_privacy")
#: Runs older than this many seconds are past retention.
RETENTION_S = 3.0


def _cli(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpipe._cli", *args, "--coordinator", address],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def _gc(address: str, *args: str) -> dict:
    out = _cli(address, "gc", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _retention_args() -> tuple[str, ...]:
    return ("--retention-days", repr(RETENTION_S / 86400), "--retention-interval-s", "3600")


def _pipeline(name: str, *tasks: Task) -> Pipeline:
    p = Pipeline(name)
    p.add_tasks(tasks)
    return p


def _artifact_pipeline(name: str) -> Pipeline:
    # 300 KB of random bytes (incompressible): over the worker's artifact threshold, so a file.
    return _pipeline(name, Task("big", hp.big_customers, args=(300_000,)),
                     Task("talk", hp.talk_about, args=(hp.CUSTOMERS,)))  # fmt: skip


def _log_rows(data_dir, run_id: str) -> int:
    """Rows the coordinator's task log database holds for ``run_id`` (read directly)."""
    with sqlite3.connect(data_dir / "task-logs.db") as db:
        return db.execute("SELECT COUNT(*) FROM task_logs WHERE run_id = ?", (run_id,)).fetchone()[0]


def _run_and_wait_logs(pm: PipelineManager, pipeline: Pipeline, task_name: str, needle: str) -> str:
    result = pm.execute_pipeline(pipeline, monitor=False, timeout_s=60)
    assert result.succeeded, result
    eventually(lambda: needle in pm.get_logs(result.run_id, task_name), timeout_s=10)
    return result.run_id


def test_gc_dry_run_lists_old_runs_then_gc_deletes_them_with_logs_and_artifacts(tmp_path):
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS, coordinator_args=_retention_args()) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        old = _run_and_wait_logs(pm, _artifact_pipeline("old"), "talk", "sent a letter")
        artifacts = c.data_dir / "artifacts"
        assert any((artifacts / old).iterdir()), "the big result should be an artifact file"
        running = pm.submit(_pipeline("slow", Task("nap", ht.sleep, args=(120,))))
        eventually(lambda: pm.client.get_run(running).tasks[0].state == "RUNNING", timeout_s=20)
        orphan = artifacts / ("0" * 16)  # a run id the store does not have
        orphan.mkdir()
        (orphan / "t.1").write_bytes(b"x" * 1000)
        ancient = time.time() - 86400
        os.utime(orphan / "t.1", (ancient, ancient))
        os.utime(orphan, (ancient, ancient))
        with sqlite3.connect(c.data_dir / "task-logs.db") as db:  # logs of a run the store does not have
            db.execute("INSERT INTO task_logs (run_id, task, attempt, stream, data, dropped, final, at) "
                       "VALUES ('gone', 't', 1, 1, x'00', 0, 0, 0)")  # fmt: skip

        # Dry run: lists the old run (once it is older than the limit) and the orphan, deletes nothing.
        listed = eventually(
            lambda: (d := _gc(c.address, "--dry-run")) and d["runs"] and d, timeout_s=RETENTION_S + 10
        )
        assert listed["dry_run"] is True
        assert [r["run_id"] for r in listed["runs"]] == [old]
        entry = listed["runs"][0]
        assert entry["namespace"] == "default" and entry["artifact_files"] >= 1 and entry["log_rows"] >= 1
        assert listed["orphaned_artifacts"] == [str(orphan.resolve())]
        assert listed["orphaned_log_rows"] == 1
        assert listed["files"] >= 2 and listed["bytes"] > 300_000
        assert pm.get_run(old).succeeded and (artifacts / old).exists() and orphan.exists()
        assert "sent a letter" in pm.get_logs(old, "talk") and _log_rows(c.data_dir, old) >= 1

        # The real thing: the old run, its logs and artifacts go; the unfinished run stays.
        done = _gc(c.address)
        assert done["dry_run"] is False and [r["run_id"] for r in done["runs"]] == [old]
        with pytest.raises(RunNotFoundError):
            pm.client.get_run(old)
        assert old not in [r.run_id for r in pm.list_runs()]
        assert not (artifacts / old).exists() and not orphan.exists()
        assert _log_rows(c.data_dir, old) == 0 and _log_rows(c.data_dir, "gone") == 0
        assert pm.client.get_run(running).summary.state == "RUNNING"
        again = _gc(c.address, "--dry-run")
        assert again["runs"] == [] and again["orphaned_artifacts"] == []
        pm.cancel(running)


def test_retention_per_namespace_and_gc_refused_when_retention_is_off(tmp_path):
    # Only namespace "short" has a limit: runs of "default" are kept however old.
    args = ("--retention", f"short={RETENTION_S / 86400!r}", "--retention-interval-s", "3600")
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS, coordinator_args=args) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        kept = pm.execute_pipeline(_pipeline("kept", Task("a", ht.noop)), monitor=False)
        proto = _pipeline("short-lived", Task("a", ht.noop)).to_proto()
        proto.namespace = "short"
        short = pm.client._submit_spec(proto)
        eventually(lambda: pm.client.get_run(short).summary.state == "SUCCEEDED", timeout_s=20)
        listed = eventually(
            lambda: (d := _gc(c.address, "--dry-run")) and d["runs"] and d, timeout_s=RETENTION_S + 10
        )
        assert [(r["run_id"], r["namespace"]) for r in listed["runs"]] == [(short, "short")]
        assert listed["retention_days"] == {"short": pytest.approx(RETENTION_S / 86400)}
        assert pm.collect_garbage().runs[0]["run_id"] == short
        assert pm.get_run(kept.run_id).succeeded
    with Cluster(tmp_path / "off", workers=0) as c:
        out = _cli(c.address, "gc")
        assert out.returncode == 2 and "retention is off" in out.stderr and "--retention-days" in out.stderr


def test_marked_task_logs_are_redacted_and_forget_subject_erases_records_and_lines(tmp_path):
    with (
        Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c,
        PipelineManager(coordinator=c.address) as pm,
    ):

        @pm.pipeline("gdpr")
        @comply_with_gdpr
        def gdpr():
            @task("load")
            def load():
                return hp.customers()

            @task("talk", depends_on=["load"])
            @ensure_privacy_compliance(pii=["email", "name"])
            def talk(rows):
                return hp.talk_about(rows)

            return [load, talk]

        marked = _run_and_wait_logs(pm, gdpr, "talk", "sent a letter")
        text = pm.get_logs(marked, "talk")
        assert "dana@example.org" not in text and "Dana Scully" not in text
        assert f"processing email={REDACTED} id=1" in text and f'"name": "{REDACTED}"' in text
        assert f"sent a letter to {REDACTED}" in text  # a bare value seen in the task's input
        cli = _cli(c.address, "logs", marked, "talk")
        assert cli.returncode == 0 and "dana@example.org" not in cli.stdout and REDACTED in cli.stdout
        # The program gets the real value; the CLI shows it redacted.
        assert pm.client.task_result(marked, "load").value[0]["email"] == "dana@example.org"
        shown = json.loads(_cli(c.address, "result", marked, "load", "--json").stdout)
        assert shown["value"][0] == {"id": 1, "email": REDACTED, "name": REDACTED}

        # A marked task that fails: its error message and output tail are scrubbed as well.
        failing = ensure_privacy_compliance(pii=["email"])(Task("check", hp.fail_about, args=(hp.CUSTOMERS,)))
        failed = pm.execute_pipeline(_pipeline("failing", failing), monitor=False, raise_on_failure=False, timeout_s=60)
        assert not failed.succeeded
        error = failed.tasks["check"].error
        assert error == f"bad customer {REDACTED}"
        status = _cli(c.address, "status", failed.run_id)
        assert "bad customer [REDACTED]" in status.stdout and "dana@example.org" not in status.stdout
        eventually(lambda: "checking" in pm.get_logs(failed.run_id), timeout_s=10)
        assert "dana@example.org" not in pm.get_logs(failed.run_id)

        # An unmarked run: its logs and results hold the subject in the clear.
        plain = _pipeline("plain", Task("load", hp.customers), Task("talk", hp.talk_about, depends_on=["load"]),
                          Task("one", ht.echo, args=(dict(hp.CUSTOMERS[0]),)),
                          Task("opaque", hp.opaque, args=("dana@example.org",)),
                          Task("big", hp.big_customers, args=(300_000,)),  # an artifact file
                          Task("lost", hp.big_customers, args=(300_000,)))  # fmt: skip
        unmarked = _run_and_wait_logs(pm, plain, "talk", "sent a letter")
        assert "dana@example.org" in pm.get_logs(unmarked, "talk")
        artifacts = c.data_dir / "artifacts" / unmarked
        assert sorted(f.name for f in artifacts.iterdir()) == ["big.1", "lost.1"]
        big_before = (artifacts / "big.1").read_bytes()
        (artifacts / "lost.1").unlink()  # a lost file: reported, not a failure
        as_json = _submit_json_echo(pm)
        running = pm.submit(_pipeline("running", Task("nap", ht.sleep, args=(120,))))

        # The server checks what it is given too (the SDK checks first).
        with pytest.raises(RequestRejectedError, match="ForgetSubjectRequest.value must have 1 to 4096"):
            pm.client._call_on(GovernanceServiceStub, lambda stub: stub.ForgetSubject(
                governance_pb2.ForgetSubjectRequest(field="email", value="")))  # fmt: skip
        report = pm.forget_subject("Email", "dana@example.org")  # field names match in any case

        removed = {(r[0], r[1]): r for r in report.results}
        assert removed[(unmarked, "load")][2:] == (1, False)
        assert removed[(unmarked, "one")][2:] == (1, True)  # the result was the record: deleted
        assert removed[(marked, "load")][2:] == (1, False)
        assert removed[(as_json, "echo")][2:] == (1, False)
        assert removed[(unmarked, "big")][2:] == (1, False)
        assert report.records_removed == 5
        assert report.log_lines_removed == 3  # unmarked talk: two lines; the JSON echo: one
        reasons = {(run, name): why for run, name, why in report.not_inspected}
        assert "tests.helpers_privacy.Opaque, not only plain builtin values" in reasons[(unmarked, "opaque")]
        assert "its stored bytes cannot be read" in reasons[(unmarked, "lost")]
        assert "the run is unfinished" in reasons[(running, "")]
        # Submitted arguments are listed, not rewritten: "one" and the JSON echo got the record
        # as an argument ("opaque" got the bare string, which is no record).
        kept = "its submitted arguments hold the subject; they are kept as submitted"
        assert kept in reasons[(unmarked, "one")] and kept in reasons[(as_json, "echo")]
        assert set(reasons) == {(unmarked, "opaque"), (unmarked, "lost"), (running, ""), (unmarked, "one"),
                                (as_json, "echo"), (failed.run_id, "check")}  # fmt: skip
        assert report.runs_touched == 3 and report.tasks_touched == 6

        fox = [dict(hp.CUSTOMERS[1])]
        assert pm.client.task_result(unmarked, "load").value == fox
        assert pm.client.task_result(marked, "load").value == fox
        assert pm.client.task_result(as_json, "echo").value == fox
        assert pm.client.task_result(unmarked, "one").value is None  # a deleted result reads as None
        big = pm.client.task_result(unmarked, "big").value  # rewritten in its artifact file
        assert big["rows"] == fox and len(big["padding"]) == 300_000
        big_after = (artifacts / "big.1").read_bytes()
        assert big_after != big_before and b"dana@example.org" not in big_after
        logs = pm.get_logs(unmarked)
        assert "dana@example.org" not in logs and "fox@example.org" in logs
        assert "dana@example.org" not in pm.get_logs(as_json)
        # Nothing is left to erase: a second call finds nothing.
        again = pm.forget_subject("email", "dana@example.org")
        assert again.records_removed == 0 and again.log_lines_removed == 0
        assert "erased 0 records" in str(again)
        pm.cancel(running)


def _submit_json_echo(pm: PipelineManager) -> str:
    """A handler task with JSON arguments: its stored result is JSON (the polyglot path)."""
    spec = _pipeline("json", Task.handler("echo", "privacy_echo")).to_proto()
    args = json.dumps({"args": [[dict(r) for r in hp.CUSTOMERS]]}).encode()
    spec.tasks[0].args.CopyFrom(
        common_pb2.Payload(codec=common_pb2.CODEC_JSON, data=args, size_bytes=len(args))
    )
    run_id = pm.client._submit_spec(spec)
    eventually(lambda: pm.client.get_run(run_id).summary.state == "SUCCEEDED", timeout_s=20)
    eventually(lambda: "first email=dana@example.org" in pm.get_logs(run_id), timeout_s=10)
    return run_id


async def _etcd_keys_naming(endpoint: str, run_id: str, tmp_path) -> list[bytes]:
    """Every key of the default cluster that names ``run_id`` (read straight from etcd)."""
    from xpipe.coordinator._etcd_store import EtcdStore

    store = EtcdStore([endpoint], cluster="default", artifact_dir=tmp_path / "unused")
    await store.open()
    try:
        return [kv.key async for kv in store._scan(store.prefix, keys_only=True) if run_id.encode() in kv.key]
    finally:
        await store.close()


def test_etcd_store_deletes_old_runs(tmp_path):
    with EtcdServer(tmp_path / "etcd") as etcd:
        args = ("--store", f"etcd://{etcd.endpoint}", *_retention_args())
        with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS, coordinator_args=args) as c, \
                PipelineManager(coordinator=c.address) as pm:  # fmt: skip
            old = _run_and_wait_logs(pm, _artifact_pipeline("old"), "talk", "sent a letter")
            listed = eventually(
                lambda: (d := _gc(c.address, "--dry-run")) and d["runs"] and d, timeout_s=RETENTION_S + 10
            )
            assert [r["run_id"] for r in listed["runs"]] == [old]
            before = {key.split(b"/")[3] for key in asyncio.run(_etcd_keys_naming(etcd.endpoint, old, tmp_path))}
            assert before >= {b"runs", b"specs", b"tasks", b"bytime"}  # what the sweep must remove
            assert [r["run_id"] for r in _gc(c.address)["runs"]] == [old]
            with pytest.raises(RunNotFoundError):
                pm.client.get_run(old)
            assert not (c.data_dir / "artifacts" / old).exists()
            assert asyncio.run(_etcd_keys_naming(etcd.endpoint, old, tmp_path)) == []
            report = pm.forget_subject("email", "fox@example.org")
            assert report.records_removed == 0 and report.not_inspected == ()


def test_the_embedded_default_acts_on_lineage_privacy_and_retention(tmp_path):
    cfg = {"compliance": {"audit_logging": True, "data_lineage": True, "privacy_controls": ["email"],
                          "retention_policies": True, "retention_days": 30},
           "workers": 1, "slots_per_worker": 1, "data_dir": str(tmp_path / "data")}  # fmt: skip
    with PipelineManager(cfg) as pm:
        p = _pipeline("marked", Task("a", ht.noop))
        spec = pm._resolve(p).to_proto()
        assert spec.lineage and spec.tasks[0].track_lineage and list(spec.tasks[0].pii_fields) == ["email"]
        assert pm.execute_pipeline(p, monitor=False, timeout_s=60).succeeded
        # The embedded coordinator was started with --retention-days 30: gc answers with that limit.
        assert pm.collect_garbage(dry_run=True).retention_days == {"": 30.0}


def test_the_sweeper_deletes_old_runs_by_itself(tmp_path):
    args = ("--retention-days", repr(1 / 86400), "--retention-interval-s", "0.5")
    with Cluster(tmp_path, workers=1, slots=1, imports=IMPORTS, coordinator_args=args) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        run_id = pm.execute_pipeline(
            _pipeline("soon-old", Task("a", ht.noop)), monitor=False, timeout_s=60
        ).run_id

        def gone() -> bool:
            try:
                pm.client.get_run(run_id)
            except RunNotFoundError:
                return True
            return False

        eventually(gone, timeout_s=15)
        # The sweep logs once its deletions are done: the run can be gone a moment before.
        eventually(lambda: "retention: deleted 1 runs" in c.coordinator.log_text(), timeout_s=10,
                   message="the sweeper never logged its deletion")  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), [
    (["--retention-days", "0"], "--retention-days must be a positive number of days, got 0.0"),
    (["--retention", "audit"], "--retention 'audit': expected NAMESPACE=DAYS"),
    (["--retention-interval-s", "0"], "--retention-interval-s must be positive"),
])  # fmt: skip
def test_bad_retention_flags_stop_the_coordinator_with_the_reason(tmp_path, flags, message):
    out = subprocess.run([sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0",
                          "--data-dir", str(tmp_path), *flags], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode != 0 and f"xpipe-coordinator: {message}" in out.stderr


def test_forget_subject_erases_sealed_results_artifacts_and_logs(tmp_path):
    """With encryption at rest, forgetting opens sealed values, erases the subject, seals again."""
    from xpipe.security._keys import create_keyring

    keys = tmp_path / "keys.json"
    create_keyring(keys)
    sealed = ("--encryption-key-file", str(keys))
    with (
        Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS, coordinator_args=sealed, worker_args=sealed) as c,
        PipelineManager(coordinator=c.address) as pm,
    ):
        plain = _pipeline("sealed", Task("load", hp.customers), Task("talk", hp.talk_about, depends_on=["load"]),
                          Task("big", hp.big_customers, args=(300_000,)))  # fmt: skip
        run_id = _run_and_wait_logs(pm, plain, "talk", "sent a letter")
        artifact = c.data_dir / "artifacts" / run_id / "big.1.xpe"
        before = artifact.read_bytes()
        assert b"dana@example.org" not in before  # sealed on disk

        report = pm.forget_subject("email", "dana@example.org")

        removed = {(r[0], r[1]): r for r in report.results}
        assert set(removed) == {(run_id, "load"), (run_id, "big")}, report
        assert report.log_lines_removed == 2  # talk's field=value line and its bare-value line for Dana
        fox = [dict(hp.CUSTOMERS[1])]
        assert pm.client.task_result(run_id, "load").value == fox
        big = pm.client.task_result(run_id, "big").value  # the artifact was rewritten sealed
        assert big["rows"] == fox and len(big["padding"]) == 300_000
        after = artifact.read_bytes()
        assert after != before and b"fox@example.org" not in after
        logs = pm.get_logs(run_id)
        assert "dana@example.org" not in logs and "fox@example.org" in logs
