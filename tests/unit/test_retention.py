"""Retention (which runs go, per namespace), forgetting's pure part, and the SQLite store's governance methods."""

from __future__ import annotations

import asyncio
import json
import pickle

import pytest
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._events import RunRecord, TaskRecord
from xpipe.coordinator._forget import check_subject, without_subject
from xpipe.coordinator._logs import TaskLogStore
from xpipe.coordinator._retention import SECONDS_PER_DAY, RetentionPolicy, select_expired
from xpipe.coordinator._store import SQLiteStore

NOW = 1_800_000_000.0
DAY = SECONDS_PER_DAY


def _run(run_id: str, *, finished_days_ago: float, state: int = pb.RUN_SUCCEEDED) -> RunRecord:
    finished = NOW - finished_days_ago * DAY if state != pb.RUN_RUNNING else 0.0
    return RunRecord(run_id, "p", state, finished - 60, finished, 1)


def test_policy_from_flags_and_its_errors():
    policy = RetentionPolicy.from_flags("30", ["audit=365", " scratch = 0.5 "])
    assert policy.days_for("") == 30 and policy.days_for("default") == 30 and policy.days_for("other") == 30
    assert policy.days_for("audit") == 365 and policy.days_for("scratch") == 0.5
    assert policy.shortest_days() == 0.5 and policy.longest_days() == 365
    assert policy.as_map() == {"": 30, "audit": 365, "scratch": 0.5}
    assert not RetentionPolicy.from_flags(None).enabled
    only_ns = RetentionPolicy.from_flags(None, ["scratch=1"])
    assert only_ns.days_for("default") is None and only_ns.longest_days() is None  # orphans kept
    for bad, message in [
        (("0", []), "--retention-days must be a positive number of days, got '0'"),
        (("nan", []), "--retention-days must be a positive number"),
        (("ten", []), "--retention-days must be a number of days, got 'ten'"),
        ((None, ["audit"]), "--retention 'audit': expected NAMESPACE=DAYS"),
        ((None, ["=3"]), "expected NAMESPACE=DAYS"),
        ((None, ["a=1", "a=2"]), "namespace 'a' is given twice"),
        ((None, ["a=-1"]), "--retention a= must be a positive number of days, got '-1'"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RetentionPolicy.from_flags(*bad)


def test_select_expired_per_namespace_and_never_an_unfinished_run():
    policy = RetentionPolicy.from_flags("30", ["audit=365", "scratch=1"])
    runs = [
        (_run("old-default", finished_days_ago=31), ""),
        (_run("new-default", finished_days_ago=29), "default"),
        (_run("old-audit", finished_days_ago=100), "audit"),
        (_run("ancient-audit", finished_days_ago=400, state=pb.RUN_FAILED), "audit"),
        (_run("scratch", finished_days_ago=1.5, state=pb.RUN_CANCELLED), "scratch"),
        (_run("running", finished_days_ago=999, state=pb.RUN_RUNNING), ""),
        (RunRecord("running-with-time", "p", pb.RUN_RUNNING, NOW - 99 * DAY, NOW - 99 * DAY, 1), ""),
    ]
    picked = [(rec.run_id, ns) for rec, ns in select_expired(runs, policy, NOW)]
    assert picked == [("old-default", "default"), ("ancient-audit", "audit"), ("scratch", "scratch")]
    assert select_expired(runs, RetentionPolicy(), NOW) == []  # retention off: nothing goes


def test_without_subject_removes_records_from_lists_tuples_and_mappings():
    dana = {"id": 1, "Email": "dana@x.org"}
    fox = {"id": 2, "email": "fox@x.org"}
    data = {"rows": [dana, fox], "pair": (fox, dict(dana)), "owner": dict(dana), "n": 3}
    new, removed = without_subject(data, "EMAIL", "dana@x.org")
    assert removed == 3
    assert new == {"rows": [fox], "pair": (fox,), "n": 3}
    assert data["rows"] == [dana, fox]  # the input is not changed
    gone, n = without_subject(dana, "email", "dana@x.org")
    assert n == 1 and gone is not dana and not isinstance(gone, dict)  # the whole value was the record
    same, n = without_subject([fox, "dana@x.org"], "email", "dana@x.org")
    assert n == 0 and same == [fox, "dana@x.org"]  # a bare string is not a record
    numbered, n = without_subject([{"customer_id": 7}, {"customer_id": 8}], "customer_id", "7")
    assert n == 1 and numbered == [{"customer_id": 8}]


def test_check_subject_names_the_field_and_the_limit():
    assert check_subject("email", "a@x.org") == ""
    assert "ForgetSubjectRequest.field must have 1 to" in check_subject(" ", "a")
    assert "ForgetSubjectRequest.value must have 1 to 4096 characters, got 0" == check_subject("email", "")
    assert "got 4097" in check_subject("email", "x" * 4097)


def _task(run_id: str, name: str, value) -> TaskRecord:
    data = json.dumps(value).encode()
    payload = pb.Payload(codec=pb.CODEC_JSON, data=data, size_bytes=len(data))
    return TaskRecord(run_id, name, pb.SUCCEEDED, 1, "w", NOW - 10, NOW - 5, None, payload)


def test_sqlite_store_governance_methods(tmp_path):
    async def scenario():
        store = SQLiteStore(tmp_path / "xpipe.db")
        await store.open()
        try:
            specs = {"a": "", "b": "audit", "live": ""}
            for run_id, namespace in specs.items():
                state = pb.RUN_RUNNING if run_id == "live" else pb.RUN_SUCCEEDED
                finished = 0.0 if run_id == "live" else NOW - 2 * DAY
                await store.commit([
                    RunRecord(run_id, "p", state, NOW - 3 * DAY, finished, 1,
                              spec=pb.PipelineSpec(name="p", namespace=namespace)),
                    _task(run_id, "t", [{"email": "dana@x.org"}, {"email": "fox@x.org"}]),
                ])  # fmt: skip
            old = await store.finished_runs_before(NOW - DAY)
            assert sorted((rec.run_id, ns) for rec, ns in old) == [("a", ""), ("b", "audit")]
            assert await store.finished_runs_before(NOW - 3 * DAY) == []
            assert await store.run_ids() == {"a", "b", "live"}
            page = await store.finished_results(("", ""), 1)
            assert [(r, t) for r, t, _ in page] == [("a", "t")]
            assert [(r, t) for r, t, _ in await store.finished_results(("a", "t"), 10)] == [
                ("b", "t")
            ]  # not "live"
            fox = json.dumps([{"email": "fox@x.org"}]).encode()
            await store.replace_results([("a", "t", pb.Payload(codec=pb.CODEC_JSON, data=fox, size_bytes=len(fox))),
                                         ("b", "t", None)])  # fmt: skip
            a = await store.get_run("a", with_results=True)
            assert a.tasks["t"].result.data == fox
            assert (await store.get_run("b", with_results=True)).tasks["t"].result is None
            specs_page = await store.finished_specs("", 10)
            assert [(r, spec.namespace) for r, spec in specs_page] == [("a", ""), ("b", "audit")]  # not "live"
            assert await store.finished_specs("a", 10) == specs_page[1:]
            assert await store.delete_runs(["a", "live", "nope"]) == 1  # the unfinished run stays
            assert await store.get_run("a") is None and await store.get_run("live") is not None
            assert {r.run_id for r in await store.list_runs(10)} == {"b", "live"}
        finally:
            await store.close()

    asyncio.run(scenario())


def test_task_log_store_usage_delete_and_forget(tmp_path):
    async def scenario():
        async with TaskLogStore(tmp_path / "task-logs.db") as logs:
            batch = worker_pb2.TaskLogBatch()
            texts = {"a": b"hi dana@x.org\nok\nbye dana@x.org\n", "b": b"fox\n"}
            for run_id, text in texts.items():
                entry = batch.entries.add(stream=1, data=text)
                entry.attempt.run_id, entry.attempt.task, entry.attempt.attempt = run_id, "t", 1
            logs.append(batch, NOW)
            usage = await logs.usage(["a", "b", "c"])
            assert usage == {"a": (1, len(texts["a"])), "b": (1, 4)}
            assert await logs.forget("dana@x.org") == (2, {("a", "t")})
            assert [row.data for row in await logs.read("a")] == [b"ok\n"]
            assert await logs.delete_runs(["b"]) == 1
            assert await logs.read("b") == []

    asyncio.run(scenario())


def test_pickled_rewrite_round_trip_is_plain():
    # What forget writes back for a pickled result reads back with the safe reader.
    from xpipe.security._privacy import safe_loads

    new, _ = without_subject([{"email": "dana@x.org"}, {"email": "fox@x.org"}], "email", "dana@x.org")
    assert safe_loads(pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)) == [{"email": "fox@x.org"}]
