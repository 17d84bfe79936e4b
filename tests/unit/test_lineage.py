"""Lineage and data-access pieces without a cluster: the data tap, OpenLineage events, the CLI's parsing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness import free_port
from xpipe import Pipeline, Task, audit_data_access, log_data_access, track_data_lineage
from xpipe._audit_cli import parse_since
from xpipe._cli import main as cli_main
from xpipe._lineage import LineageData, LineageGraph, LineageNode, write_openlineage
from xpipe._proto import audit_pb2
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._auditlog import AuditLog
from xpipe.coordinator._entries import RunEntry
from xpipe.coordinator._events import RunRecord, TaskRecord
from xpipe.coordinator._lineage import DataTap
from xpipe.coordinator._store import SQLiteStore, StoreFault
from xpipe.security._marks import governance_of


def _spec(**marks) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name="p", tasks=[
        pb.TaskSpec(name="a", python=pb.PythonCall(import_path="m:f")),
        pb.TaskSpec(name="b", python=pb.PythonCall(import_path="m:f"), depends_on=["a"], **marks),
    ])  # fmt: skip
    return spec


def _state(run_id: str, spec: pb.PipelineSpec, results: dict[str, pb.Payload]):
    run = RunEntry(run_id, spec, 1.0)
    for name, payload in results.items():
        run.tasks[name].result = payload
    return SimpleNamespace(runs={run_id: run})


def test_an_unmarked_run_is_not_watched_and_a_marked_one_is_until_it_ends(tmp_path: Path) -> None:
    tap = DataTap(AuditLog(SQLiteStore(tmp_path / "x.db")), SQLiteStore(tmp_path / "x.db"))
    tap.watch("r0", _spec())
    assert tap.runs == {}, "a run without marks must cost nothing after submit"
    tap.watch("r1", _spec(audit_data_access=True))
    lineage_all = _spec()
    lineage_all.lineage = True
    tap.watch("r2", lineage_all)
    assert tap.runs["r1"].audited == {"b"} and tap.runs["r1"].tracked == frozenset()
    assert tap.runs["r2"].tracked == {"a", "b"} and tap.runs["r2"].principal == "local"
    spoofed = _spec(audit_data_access=True)
    spoofed.principal.name = "ceo"  # unsigned: written by a client, not by the coordinator
    tap.watch("r3", spoofed)
    assert tap.runs["r3"].principal == "local"
    signed = _spec(audit_data_access=True)
    signed.principal.name, signed.principal.signature = "dana", b"sig"
    tap.watch("r4", signed)
    assert tap.runs["r4"].principal == "dana"
    tap.observe([RunRecord("r1", "p", pb.RUN_SUCCEEDED, 1.0, 2.0, 2)], _state("r1", _spec(), {}))
    assert set(tap.runs) == {"r2", "r3", "r4"}


def test_a_value_that_cannot_be_read_is_recorded_without_its_hash_and_logged(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        async with SQLiteStore(tmp_path / "x.db") as store:
            audit = AuditLog(store)
            tap = DataTap(audit, store, artifact_root=str(tmp_path / "artifacts"))
            (tmp_path / "artifacts").mkdir()
            spec = _spec(audit_data_access=True, track_lineage=True)
            tap.watch("r1", spec)
            gone = pb.Payload(codec=pb.CODEC_PICKLE, artifact_ref=f"file://{tmp_path}/artifacts/r1/a.1", size_bytes=9)
            out = pb.Payload(codec=pb.CODEC_RAW, data=b"output", size_bytes=6)
            state = _state("r1", spec, {"a": gone})
            with caplog.at_level(logging.ERROR):
                tap.observe([TaskRecord("r1", "b", pb.SUCCEEDED, 1, "w", 1.0, 2.0, None, out, "ws-1")], state)
                await tap.drain()
            assert tap.failed == 1 and "cannot hash the data of task r1/b" in caplog.text
            (blob,) = await store.get_lineage("r1")
            node = audit_pb2.LineageNode.FromString(blob)
            assert node.inputs[0].task == "a" and node.inputs[0].sha256 == "" and node.inputs[0].artifact_ref
            await audit.stop()
            page = await store.read_audit()
            (entry,) = page.entries
            assert entry.action == "task.data_access" and entry.target == "r1/b"
            assert json.loads(entry.detail["inputs"]) == [{"task": "a", "sha256": "", "size_bytes": 0}]

    asyncio.run(main())


def test_the_tap_hashes_inline_and_artifact_values_the_same(tmp_path: Path) -> None:
    async def main() -> None:
        async with SQLiteStore(tmp_path / "x.db") as store:
            audit = AuditLog(store)
            root = tmp_path / "artifacts"
            (root / "r1").mkdir(parents=True)
            (root / "r1" / "a.1").write_bytes(b"upstream bytes")
            tap = DataTap(audit, store, artifact_root=str(root))
            spec = _spec(audit_data_access=True)
            tap.watch("r1", spec)
            ref = pb.Payload(codec=pb.CODEC_RAW, artifact_ref=f"file://{root}/r1/a.1", size_bytes=14)
            out = pb.Payload(codec=pb.CODEC_RAW, data=b"upstream bytes", size_bytes=14)
            tap.observe([TaskRecord("r1", "b", pb.SUCCEEDED, 1, "w", 1.0, 2.0, None, out, "ws-1")],
                        _state("r1", spec, {"a": ref}))  # fmt: skip
            await tap.drain()
            await audit.stop()
            (entry,) = (await store.read_audit()).entries
            digest = hashlib.sha256(b"upstream bytes").hexdigest()
            assert entry.detail["output_sha256"] == digest
            assert json.loads(entry.detail["inputs"])[0]["sha256"] == digest
            assert await store.get_lineage("r1") == [], "b is audited, not tracked"

    asyncio.run(main())


def _graph() -> LineageGraph:
    a_out = LineageData("aa" * 32, 10, "", "a", "r1")
    return LineageGraph("r1", "etl", (
        LineageNode("r1", "a", "SUCCEEDED", 100.0, 101.0, (), a_out, "dana", 1),
        LineageNode("r1", "b", "FAILED", 102.0, 103.5, (a_out,), None, "dana", 2),
    ), ())  # fmt: skip


def test_openlineage_events_follow_the_run_event_schema() -> None:
    events = _graph().openlineage_events(namespace="prod")
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("etl.a", "START"), ("etl.a", "COMPLETE"), ("etl.b", "START"), ("etl.b", "FAIL")]  # fmt: skip
    for e in events:
        assert {"eventType", "eventTime", "run", "job", "inputs", "outputs", "producer", "schemaURL"} <= set(e)
        uuid.UUID(e["run"]["runId"])
        assert e["run"]["facets"]["parent"]["job"] == {"namespace": "prod", "name": "etl"}
    assert events[1]["eventTime"] == "1970-01-01T00:01:41.000000+00:00"
    assert events[1]["outputs"][0]["name"] == "sha256:" + "aa" * 32 and events[0]["outputs"] == []
    assert events[3]["inputs"][0]["facets"]["xpipe"]["task"] == "a" and events[3]["outputs"] == []
    assert _graph().openlineage_events(namespace="prod") == events, "run ids must be stable across exports"
    with pytest.raises(ValueError, match="namespace"):
        _graph().openlineage_events(namespace="")


def test_write_openlineage_refuses_bad_targets_and_names_an_unreachable_endpoint(tmp_path: Path) -> None:
    events = _graph().openlineage_events()
    with pytest.raises(ValueError, match="exactly one of"):
        write_openlineage(events, path=tmp_path / "x", url="http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="expected http"):
        write_openlineage(events, url="ftp://127.0.0.1/x")
    port = free_port()  # nothing listens there
    with pytest.raises(OSError, match=rf"127.0.0.1:{port}/api/v1/lineage unreachable at event 1 of 4 \(0 sent\)"):
        write_openlineage(events, url=f"http://127.0.0.1:{port}/api/v1/lineage")
    path = tmp_path / "l.jsonl"
    assert write_openlineage(events, path=path) == 4 and write_openlineage(events[:1], path=path) == 1
    assert len(path.read_text().splitlines()) == 5, "lines are appended"


def test_since_takes_a_duration_or_an_iso_time() -> None:
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-11-29T00:00:00Z") == parse_since("2026-11-29T00:00:00") == 1795910400.0
    with pytest.raises(Exception, match="expected a duration"):
        parse_since("yesterday")


def test_verify_refuses_filters(capsys) -> None:
    with pytest.raises(SystemExit, match="--verify checks the whole log"):
        cli_main(["audit", "--verify", "--since", "1h", "--coordinator", "127.0.0.1:1"])
    with pytest.raises(SystemExit) as bad:
        cli_main(["audit", "--since", "soon", "--coordinator", "127.0.0.1:1"])
    assert bad.value.code == 2 and "expected a duration" in capsys.readouterr().err


def test_the_decorators_mark_functions_tasks_and_pipelines() -> None:
    def f():
        return 1

    def g():
        return 2

    assert audit_data_access(f) is f and governance_of(f).audit_data_access
    t = log_data_access()(Task("t", f))
    assert governance_of(t).audit_data_access and not governance_of(t).track_lineage
    t2 = track_data_lineage(Task("t2", g))
    p = Pipeline("p")
    p.add_tasks([t, t2])
    assert p.enable_lineage() is p
    spec = p.to_proto()
    assert spec.lineage and [(s.name, s.audit_data_access, s.track_lineage) for s in spec.tasks] == [
        ("t", True, True), ("t2", False, True)]  # fmt: skip
    with pytest.raises(TypeError, match="@track_data_lineage goes on a function, a Task or a Pipeline"):
        track_data_lineage(42)


def test_the_stored_head_is_checked_at_start(tmp_path: Path, caplog) -> None:
    async def write(n: int) -> None:
        async with SQLiteStore(tmp_path / "h.db") as store:
            log = AuditLog(store)
            for i in range(n):
                log.record(principal="local", action="x", target=str(i))
            await log.stop()

    asyncio.run(write(3))
    db = sqlite3.connect(tmp_path / "h.db")
    db.execute("DELETE FROM audit WHERE seq = 3")
    db.commit()
    db.close()
    with caplog.at_level(logging.ERROR):
        asyncio.run(write(1))
    assert "newest stored entry does not match the stored head (seq 3)" in caplog.text


class _Refusing(SQLiteStore):
    async def append_audit(self, entries) -> None:
        raise StoreFault("the store refused a write (disk I/O error)", disk_full=False)


def test_entries_that_cannot_be_stored_at_stop_are_counted_in_the_log(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        async with _Refusing(tmp_path / "s.db") as store:
            log = AuditLog(store)
            log.record(principal="local", action="x")
            log.record(principal="local", action="y")
            with caplog.at_level(logging.ERROR):
                await log.stop(timeout_s=1.0)
                log.record(principal="local", action="late")
        following = AuditLog(SQLiteStore(tmp_path / "t.db"), leading=lambda: False)
        following.record(principal="local", action="x")
        with caplog.at_level(logging.ERROR):
            await following.stop()

    asyncio.run(main())
    assert "2 audit entries could not be stored at stop: the store refused a write (disk I/O error)" in caplog.text
    assert "audit entry after stop not stored: late" in caplog.text
    assert "1 audit entries not stored at stop: this coordinator does not lead" in caplog.text
