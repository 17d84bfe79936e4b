"""One contract for every Store: SQLite and etcd (a real etcd server) must behave the same.

The etcd-only tests below pin what HA relies on: transactions split to etcd's limits, big
values kept out of etcd, fenced writes refused once leadership is gone.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import EtcdServer, free_port
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._etcd_store import (
    EtcdStore,
    EtcdStoreError,
    EtcdUnavailableError,
    Fence,
    FencedError,
    parse_etcd_url,
)
from xpipe.coordinator._events import RunRecord, TaskRecord
from xpipe.coordinator._store import SQLiteStore, Store, open_store

_clusters = itertools.count()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for this module; each test uses its own cluster name (key prefix)."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _etcd_store(server: EtcdServer, tmp_path: Path, **options) -> EtcdStore:
    return EtcdStore([server.endpoint], cluster=f"c{next(_clusters)}", artifact_dir=tmp_path / "artifacts", **options)


@pytest.fixture(params=["sqlite", "etcd"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory of fresh stores of one kind (the etcd ones share a server, not a prefix)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / f"db{next(_clusters)}.sqlite")
    server = request.getfixturevalue("shared_etcd")
    return lambda: _etcd_store(server, tmp_path)


def run(coro):
    return asyncio.run(coro)


def _spec(name: str, tasks: int = 2) -> pb.PipelineSpec:
    return pb.PipelineSpec(
        name=name, tasks=[pb.TaskSpec(name=f"t{i}", python=pb.PythonCall(import_path="m:f")) for i in range(tasks)]
    )


def _payload(data: bytes) -> pb.Payload:
    return pb.Payload(codec=pb.CODEC_RAW, data=data, size_bytes=len(data))


def _new_run(run_id: str, created_at: float, tasks: int = 2) -> RunRecord:
    return RunRecord(run_id, f"p-{run_id}", pb.RUN_RUNNING, created_at, 0.0, tasks, _spec(f"p-{run_id}", tasks))


# --------------------------------------------------------------------------- the contract


def test_commit_then_get_run_round_trips_every_field(make_store) -> None:
    async def scenario(store: Store) -> None:
        err = pb.TaskError(error_type="TASK_FAILURE", exception_type="ValueError", message="bad", traceback="tb")
        await store.commit([
            _new_run("r1", 100.0),
            TaskRecord("r1", "t0", pb.SUCCEEDED, 1, "w0", 101.0, 102.0, None, _payload(b"result-0")),
            TaskRecord("r1", "t1", pb.FAILED, 2, "w1", 103.0, 104.0, err, None),
        ])  # fmt: skip
        stored = await store.get_run("r1", with_results=True)
        assert stored is not None
        assert stored.header == RunRecord("r1", "p-r1", pb.RUN_RUNNING, 100.0, 0.0, 2)
        assert stored.spec == _spec("p-r1")
        assert stored.tasks["t0"] == TaskRecord("r1", "t0", pb.SUCCEEDED, 1, "w0", 101.0, 102.0, None,
                                                _payload(b"result-0"))  # fmt: skip
        assert stored.tasks["t1"] == TaskRecord("r1", "t1", pb.FAILED, 2, "w1", 103.0, 104.0, err, None)
        without = await store.get_run("r1")
        assert without is not None and without.tasks["t0"].result is None, "results read without being asked for"
        assert await store.get_run("nope") is None

    async def main() -> None:
        async with make_store() as store:
            await scenario(store)

    run(main())


def test_a_failed_attempts_story_round_trips_with_its_task(make_store) -> None:
    history = (
        (101.0, "schedule-3", "r1", "t0", 1, pb.READY, pb.ASSIGNED, "worker w0"),
        (102.5, "ws-w0-1.4", "r1", "t0", 1, pb.RUNNING, pb.RETRY_WAIT, "TASK_FAILURE: boom \u2603"),
    )

    async def main() -> None:
        async with make_store() as store:
            await store.commit([
                _new_run("r1", 100.0),
                TaskRecord("r1", "t0", pb.RETRY_WAIT, 1, "w0", 101.5, 102.5, history=history),
                TaskRecord("r1", "t1", pb.SUCCEEDED, 1, "w0", 101.0, 102.0),
            ])  # fmt: skip
            await store.commit([TaskRecord("r1", "t0", pb.READY, 1, history=history)])
            stored = await store.get_run("r1")
            assert stored is not None
            assert stored.tasks["t0"].history == history and stored.tasks["t0"].state == pb.READY
            assert stored.tasks["t1"].history == ()

    run(main())


def test_what_an_attempt_recorded_round_trips_with_its_task_and_an_empty_one_replaces_it(make_store) -> None:
    measured = pb.TaskTelemetry(
        metrics=[pb.MetricPoint(name="rows", value=12.0, labels={"table": "users"}, kind=pb.METRIC_KIND_CUSTOM)],
        performance=pb.TaskPerformance(wall_s=1.5, cpu_s=0.25, peak_rss_bytes=1 << 20),
        warnings=["tracked metric 'x': no key"],
    )

    async def main() -> None:
        async with make_store() as store:
            await store.commit([
                _new_run("r1", 100.0),
                TaskRecord("r1", "t0", pb.RETRY_WAIT, 1, "w0", 101.0, 102.0, telemetry=measured),
                TaskRecord("r1", "t1", pb.SUCCEEDED, 1, "w0", 101.0, 102.0),
            ])  # fmt: skip
            stored = await store.get_run("r1")
            assert stored is not None
            assert stored.tasks["t0"].telemetry == measured
            assert stored.tasks["t1"].telemetry is None, "a task that recorded nothing reads back as None"
            # The retry recorded nothing: the state machine sends an empty message in its place.
            await store.commit([TaskRecord("r1", "t0", pb.SUCCEEDED, 2, "w0", 103.0, 104.0, telemetry=pb.TaskTelemetry())])
            again = await store.get_run("r1", with_results=True)
            assert again is not None and again.tasks["t0"].telemetry == pb.TaskTelemetry()

    run(main())


def test_later_record_wins_within_and_across_commits(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            await store.commit([
                _new_run("r1", 100.0),
                TaskRecord("r1", "t0", pb.READY, 0),
                TaskRecord("r1", "t0", pb.ASSIGNED, 1, "w0"),
                TaskRecord("r1", "t0", pb.RUNNING, 1, "w0", 101.0),
            ])  # fmt: skip
            stored = await store.get_run("r1")
            assert stored is not None and stored.tasks["t0"].state == pb.RUNNING and stored.tasks["t0"].attempt == 1
            await store.commit([
                TaskRecord("r1", "t0", pb.SUCCEEDED, 1, "w0", 101.0, 102.0, None, _payload(b"x")),
                RunRecord("r1", "p-r1", pb.RUN_SUCCEEDED, 100.0, 103.0, 2),
            ])  # fmt: skip
            stored = await store.get_run("r1", with_results=True)
            assert stored is not None
            assert stored.header.state == pb.RUN_SUCCEEDED and stored.header.finished_at == 103.0
            assert stored.spec == _spec("p-r1"), "a run update dropped the spec"
            assert stored.tasks["t0"].state == pb.SUCCEEDED and stored.tasks["t0"].result == _payload(b"x")

    run(main())


def test_load_unfinished_returns_open_runs_oldest_first_with_results(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            await store.commit([_new_run("late", 300.0), _new_run("early", 100.0), _new_run("done", 200.0)])
            await store.commit([
                TaskRecord("early", "t0", pb.SUCCEEDED, 1, "w0", 1.0, 2.0, None, _payload(b"kept")),
                RunRecord("done", "p-done", pb.RUN_SUCCEEDED, 200.0, 201.0, 2),
            ])  # fmt: skip
            runs = await store.load_unfinished()
            assert [r.header.run_id for r in runs] == ["early", "late"]
            assert runs[0].spec == _spec("p-early")
            assert runs[0].tasks["t0"].result == _payload(b"kept"), "load_unfinished must carry results"
            await store.commit([RunRecord("late", "p-late", pb.RUN_CANCELLED, 300.0, 301.0, 2)])
            assert [r.header.run_id for r in await store.load_unfinished()] == ["early"]

    run(main())


def test_list_runs_is_newest_first_and_limited(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            await store.commit([_new_run(f"r{i}", 1000.0 + i) for i in (3, 1, 4, 0, 2)])
            await store.commit([RunRecord("r4", "p-r4", pb.RUN_FAILED, 1004.0, 1005.0, 2)])
            runs = await store.list_runs(3)
            assert [r.run_id for r in runs] == ["r4", "r3", "r2"]
            assert runs[0].state == pb.RUN_FAILED and runs[0].spec is None
            assert [r.run_id for r in await store.list_runs(50)] == ["r4", "r3", "r2", "r1", "r0"]

    run(main())


def test_batch_above_128_records_is_written_whole(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            records: list[RunRecord | TaskRecord] = [_new_run("big", 1.0, tasks=300)]
            records += [TaskRecord("big", f"t{i}", pb.READY, 0) for i in range(300)]
            await store.commit(records)
            stored = await store.get_run("big")
            assert stored is not None and len(stored.tasks) == 300
            assert all(t.state == pb.READY for t in stored.tasks.values())
            if isinstance(store, EtcdStore):
                assert store.txns >= 3, f"300+ operations must take 3+ transactions, took {store.txns}"
                assert store.ops == 300 + 4

    run(main())


def test_batch_above_one_and_a_half_mib_is_split_by_size(make_store) -> None:
    # 40 incompressible results of 48 KiB (below the 64 KiB inline limit): ~1.9 MiB in one commit,
    # more than etcd accepts in one request.
    results = {f"t{i}": _payload(os.urandom(48 * 1024)) for i in range(40)}

    async def main() -> None:
        async with make_store() as store:
            records: list[RunRecord | TaskRecord] = [_new_run("heavy", 1.0, tasks=40)]
            records += [TaskRecord("heavy", n, pb.SUCCEEDED, 1, "w0", 1.0, 2.0, None, p) for n, p in results.items()]
            await store.commit(records)
            stored = await store.get_run("heavy", with_results=True)
            assert stored is not None
            assert {n: t.result for n, t in stored.tasks.items()} == results
            if isinstance(store, EtcdStore):
                assert store.txns >= 2, "a 1.9 MiB batch went out in one transaction"
                assert store.artifacts_written == 0, "values below the inline limit went to artifacts"

    run(main())


# --------------------------------------------------------------------------- etcd only


def test_big_values_go_to_the_artifact_dir_and_etcd_holds_a_reference(shared_etcd, tmp_path) -> None:
    big = _payload(os.urandom(200 * 1024))

    async def main() -> EtcdStore:
        async with _etcd_store(shared_etcd, tmp_path) as store:
            await store.commit([_new_run("r", 1.0), TaskRecord("r", "t0", pb.SUCCEEDED, 1, "w", 1.0, 2.0, None, big)])
            stored = await store.get_run("r", with_results=True)
            assert stored is not None and stored.tasks["t0"].result == big
            return store

    store = run(main())
    raw = shared_etcd.get(store.prefix + b"tasks/r/t0")
    assert raw is not None and raw.startswith(b"a") and len(raw) == 65, f"etcd holds {len(raw or b'')} bytes"
    files = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name == raw[1:].decode()
    files[0].unlink()

    async def read_again() -> None:
        async with EtcdStore([shared_etcd.endpoint], cluster=store.cluster, artifact_dir=tmp_path / "artifacts") as s:
            with pytest.raises(EtcdStoreError, match=r"artifact .* is missing: do all coordinators share"):
                await s.get_run("r", with_results=True)

    run(read_again())


def test_fenced_write_is_refused_once_the_leader_key_changes(shared_etcd, tmp_path) -> None:
    async def main() -> None:
        async with _etcd_store(shared_etcd, tmp_path) as store:
            shared_etcd.put(store.leader_key, b"127.0.0.1:1")
            reply = shared_etcd._gateway("/v3/kv/range", {"key": base64.b64encode(store.leader_key).decode()})
            term = int(reply["kvs"][0]["create_revision"])
            store.fence = Fence(store.leader_key, term)
            await store.commit([_new_run("ok", 1.0)])
            # Another coordinator's term: the key is deleted and created again.
            shared_etcd._gateway("/v3/kv/deleterange", {"key": base64.b64encode(store.leader_key).decode()})
            shared_etcd.put(store.leader_key, b"127.0.0.1:2")
            with pytest.raises(FencedError, match=rf"no longer the leader .* create_revision {term}"):
                await store.commit([_new_run("stale", 2.0), TaskRecord("ok", "t0", pb.SUCCEEDED, 1)])
            store.fence = None
            assert await store.get_run("stale") is None, "a fenced commit wrote something"
            ok = await store.get_run("ok")
            assert ok is not None and "t0" not in ok.tasks
            assert store.txns == 1

    run(main())


def test_unreachable_etcd_fails_with_a_clear_error(tmp_path) -> None:
    async def main() -> None:
        port = free_port()
        async with EtcdStore([f"127.0.0.1:{port}"], cluster="x", artifact_dir=tmp_path, retry_s=0.3,
                             call_timeout_s=0.2) as store:  # fmt: skip
            with pytest.raises(EtcdUnavailableError, match=rf"etcd commit failed: no answer from 127.0.0.1:{port}"):
                await store.commit([_new_run("r", 1.0)])

    run(main())


def test_etcd_url_and_options_are_validated(tmp_path) -> None:
    assert parse_etcd_url("etcd://a:1,b:2/") == ["a:1", "b:2"]
    for bad, match in [("etcd://", "no endpoint"), ("etcd://host", "expected HOST:PORT"),
                       ("etcd://h:99999", "expected HOST:PORT"), ("http://h:1", "expected etcd://")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            parse_etcd_url(bad)
    with pytest.raises(ValueError, match="bad cluster name 'a/b'"):
        EtcdStore(["h:1"], cluster="a/b", artifact_dir=tmp_path)
    store = open_store("etcd://127.0.0.1:2379", tmp_path, cluster="prod")
    assert isinstance(store, EtcdStore) and store.prefix == b"/xpipe/prod/"
    assert store.artifact_dir == tmp_path / "artifacts"
    with pytest.raises(ValueError, match="etcd://HOST:PORT"):
        open_store("zookeeper://x", tmp_path)


def test_etcd_refusals_are_named(shared_etcd, tmp_path) -> None:
    async def main() -> None:
        # Above etcd's --max-txn-ops (128): etcd refuses, and the error says so.
        async with _etcd_store(shared_etcd, tmp_path, max_txn_ops=400) as store:
            records = [TaskRecord("r", f"t{i}", pb.READY, 0) for i in range(200)]
            with pytest.raises(EtcdStoreError, match="etcd commit failed at .*too many operations"):
                await store.commit(records)
        async with _etcd_store(shared_etcd, tmp_path) as store:
            shared_etcd.put(store.prefix + b"runs/junk", b"?not ours")
            with pytest.raises(EtcdStoreError, match="run junk header has an unknown value encoding"):
                await store.get_run("junk")

    run(main())


# --------------------------------------------------------------------------- stream checkpoints


def test_a_stream_checkpoint_round_trips_and_an_older_seq_is_ignored(make_store) -> None:
    key = ("clicks", "enrich", 2)

    async def main() -> None:
        async with make_store() as store:
            assert await store.get_checkpoint(key) is None
            assert await store.put_checkpoint(key, 2, b"state-2")
            assert not await store.put_checkpoint(key, 2, b"same seq")
            assert not await store.put_checkpoint(key, 1, b"older")
            assert await store.get_checkpoint(key) == b"state-2"
            assert await store.put_checkpoint(key, 3, b"x" * 300_000)  # big: etcd keeps a reference
            assert await store.get_checkpoint(key) == b"x" * 300_000
            assert await store.get_checkpoint(("clicks", "enrich", 1)) is None

    run(main())


def test_sqlite_checkpoints_survive_a_reopen_sealed_at_rest(tmp_path) -> None:
    from xpipe.security._atrest import AtRest
    from xpipe.security._keys import create_keyring

    create_keyring(tmp_path / "keys.json")
    crypt = AtRest(tmp_path / "keys.json")
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        async with SQLiteStore(path, crypt=crypt) as store:
            await store.put_checkpoint(("s", "st", 0), 1, b"SECRET-STATE-MARK")
        on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
        assert b"SECRET-STATE-MARK" not in on_disk and len(on_disk) > 0
        async with SQLiteStore(path, crypt=crypt) as store:
            assert await store.get_checkpoint(("s", "st", 0)) == b"SECRET-STATE-MARK"

    run(main())


def test_a_deposed_leader_cannot_write_a_checkpoint(shared_etcd, tmp_path) -> None:
    async def main() -> None:
        async with _etcd_store(shared_etcd, tmp_path) as store:
            shared_etcd.put(store.leader_key, b"127.0.0.1:1")
            reply = shared_etcd._gateway("/v3/kv/range", {"key": base64.b64encode(store.leader_key).decode()})
            store.fence = Fence(store.leader_key, int(reply["kvs"][0]["create_revision"]))
            assert await store.put_checkpoint(("s", "st", 0), 1, b"one")
            shared_etcd._gateway("/v3/kv/deleterange", {"key": base64.b64encode(store.leader_key).decode()})
            shared_etcd.put(store.leader_key, b"127.0.0.1:2")
            with pytest.raises(FencedError, match="checkpoint of s/st\\[0\\] refused"):
                await store.put_checkpoint(("s", "st", 0), 2, b"two")
            assert await store.get_checkpoint(("s", "st", 0)) == b"one"

    run(main())


def test_task_checkpoints_are_kept_per_task_and_deleted_with_their_run(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            await store.commit([_new_run("r1", 1.0), _new_run("r2", 2.0)])
            assert await store.task_checkpoints("r1") == []
            await store.put_task_checkpoint("r1", "t0", 1, 1, b"t0-first")
            await store.put_task_checkpoint("r1", "t0", 2, 1, b"t0-newer")  # one per task: the newest
            await store.put_task_checkpoint("r1", "t1", 1, 4, b"y" * 300_000)  # big: etcd keeps a reference
            await store.put_task_checkpoint("r2", "t0", 1, 1, b"other run")
            assert await store.task_checkpoints("r1") == [b"t0-newer", b"y" * 300_000]
            finished = RunRecord("r1", "p-r1", pb.RUN_SUCCEEDED, 1.0, 3.0, 2, _spec("p-r1"))
            await store.commit([finished])
            assert await store.delete_runs(["r1", "r2"]) == 1  # r2 is unfinished: it stays
            assert await store.task_checkpoints("r1") == []
            assert await store.task_checkpoints("r2") == [b"other run"]

    run(main())


def test_a_deposed_leader_cannot_write_a_task_checkpoint(shared_etcd, tmp_path) -> None:
    async def main() -> None:
        async with _etcd_store(shared_etcd, tmp_path) as store:
            shared_etcd.put(store.leader_key, b"127.0.0.1:1")
            reply = shared_etcd._gateway("/v3/kv/range", {"key": base64.b64encode(store.leader_key).decode()})
            store.fence = Fence(store.leader_key, int(reply["kvs"][0]["create_revision"]))
            await store.put_task_checkpoint("r1", "t0", 1, 1, b"one")
            shared_etcd._gateway("/v3/kv/deleterange", {"key": base64.b64encode(store.leader_key).decode()})
            shared_etcd.put(store.leader_key, b"127.0.0.1:2")
            with pytest.raises(FencedError, match="checkpoint of task r1/t0 refused"):
                await store.put_task_checkpoint("r1", "t0", 1, 2, b"two")
            assert await store.task_checkpoints("r1") == [b"one"]

    run(main())
