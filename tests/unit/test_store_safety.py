"""The SQLite store fails safe: it knows it existed, refuses what it cannot read, says why a
write failed, and keeps its files private. Real SQLite files in tmp_path throughout; a full
disk is SQLite's own ``max_page_count`` limit, which fails a commit with SQLITE_FULL just
as a full file system does (the integration test fills a real tmpfs)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from contextlib import contextmanager

import pytest

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import Engine
from xpipe.coordinator._events import RunRecord, TaskRecord
from xpipe.coordinator._store import SQLiteStore, StoreFault, StoreRefused, make_private_dir


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _run(run_id: str, payload_bytes: int = 0) -> list:
    spec = pb.PipelineSpec(name="p")
    spec.tasks.add(name="a").command.argv.append("true")
    result = pb.Payload(data=os.urandom(payload_bytes)) if payload_bytes else None
    return [
        RunRecord(run_id, "p", pb.RUN_RUNNING, 1.0, 0.0, 1, spec),
        TaskRecord(run_id, "a", pb.SUCCEEDED if result else pb.READY, 1, result=result),
    ]


async def _make_store(path, **kw) -> None:
    async with SQLiteStore(path, **kw) as store:
        await store.commit(_run("r1"))


def test_a_new_store_is_private_whatever_the_umask(tmp_path):
    data = tmp_path / "data" / "deeper"

    async def scenario():
        async with SQLiteStore(data / "xpipe.db") as store:
            await store.commit(_run("r1"))
            # While open, all four files exist: the WAL and its index too.
            return {name: _mode(data / name) for name in ("xpipe.db", "xpipe.db-wal", "xpipe.db-shm", "xpipe.db.manifest")}

    with _umask(0):  # umask 0 would leave SQLite's and mkdir's defaults (0644, 0777) wide open
        modes = asyncio.run(scenario())
        artifacts = make_private_dir(tmp_path / "data" / "artifacts")
    assert modes == dict.fromkeys(modes, 0o600)
    assert _mode(tmp_path / "data") == 0o700 and _mode(data) == 0o700 and _mode(artifacts) == 0o700
    manifest = json.loads((data / "xpipe.db.manifest").read_text())
    assert set(manifest) == {"store_id", "schema_version", "created_at"}


def test_an_existing_directory_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    make_private_dir(shared)
    asyncio.run(_make_store(shared / "xpipe.db"))
    assert _mode(shared) == 0o755


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_lost_database_is_refused_with_the_way_out(tmp_path, damage):
    db = tmp_path / "xpipe.db"
    asyncio.run(_make_store(db))
    first_id = json.loads((tmp_path / "xpipe.db.manifest").read_text())["store_id"]
    if damage == "truncated":
        os.truncate(db, 0)
    else:
        db.unlink()

    with pytest.raises(StoreRefused) as caught:
        asyncio.run(SQLiteStore(db).open())
    message = str(caught.value)
    assert str(db) in message and "--accept-empty-store" in message and "backup" in message

    async def accept():
        async with SQLiteStore(db, accept_empty=True) as store:
            assert await store.list_runs(10) == []
            await store.commit(_run("r2"))

    asyncio.run(accept())
    assert json.loads((tmp_path / "xpipe.db.manifest").read_text())["store_id"] != first_id
    asyncio.run(SQLiteStore(db).open())  # accepted once: an ordinary store again


def test_an_old_store_without_a_manifest_gets_one_and_keeps_its_runs(tmp_path):
    db = tmp_path / "xpipe.db"
    asyncio.run(_make_store(db))
    (tmp_path / "xpipe.db.manifest").unlink()

    async def reopen():
        async with SQLiteStore(db) as store:
            return await store.get_run("r1")

    assert asyncio.run(reopen()) is not None
    assert (tmp_path / "xpipe.db.manifest").exists()


def test_a_file_that_is_not_a_database_is_refused_by_name(tmp_path):
    db = tmp_path / "xpipe.db"
    db.write_bytes(b"this is not a database, it is a note" * 200)
    with pytest.raises(StoreRefused, match="file is not a database") as caught:
        asyncio.run(SQLiteStore(db).open())
    assert str(db) in str(caught.value) and "--accept-empty-store" in str(caught.value)


def test_a_malformed_database_is_refused_when_runs_are_loaded(tmp_path):
    db = tmp_path / "xpipe.db"

    async def make():
        async with SQLiteStore(db, synchronous="FULL") as store:
            for i in range(200):
                await store.commit(_run(f"run-{i:04d}", payload_bytes=500))
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    asyncio.run(make())
    raw = bytearray(db.read_bytes())
    page = 4096
    for offset in range(2 * page, len(raw), page):  # every page after the schema: garbage headers
        raw[offset : offset + 16] = b"\xff" * 16
    db.write_bytes(bytes(raw))

    async def load():
        async with SQLiteStore(db) as store:
            await store.load_unfinished()

    with pytest.raises(StoreRefused, match="malformed") as caught:
        asyncio.run(load())
    assert str(db) in str(caught.value)


def test_a_full_disk_fails_the_commit_with_the_real_cause_and_the_store_goes_on(tmp_path):
    async def scenario():
        async with SQLiteStore(tmp_path / "xpipe.db") as store:
            await store.commit(_run("before"))
            pages = store._db.execute("PRAGMA page_count").fetchone()[0]
            store._db.execute(f"PRAGMA max_page_count={pages + 2}")  # what a full disk does to SQLite
            with pytest.raises(StoreFault) as caught:
                await store.commit(_run("big", payload_bytes=200_000))
            assert caught.value.disk_full
            assert "database or disk is full" in str(caught.value)
            assert "rollback" not in str(caught.value)
            with pytest.raises(StoreFault):
                await store.probe()
            assert await store.get_run("big") is None  # nothing of the failed commit
            store._db.execute("PRAGMA max_page_count=1073741823")  # space is back
            await store.probe()
            await store.commit(_run("big", payload_bytes=200_000))
            assert (await store.get_run("big", with_results=True)).tasks["a"].result.data
            assert await store.get_run("before") is not None

    asyncio.run(scenario())


def test_an_engine_whose_commit_fails_acknowledges_nothing_and_stops_with_the_fault(tmp_path):
    async def scenario():
        async with SQLiteStore(tmp_path / "xpipe.db") as store:
            engine = Engine(store)
            await engine.start()
            try:
                kept = await engine.submit(_run("x")[0].spec)
                pages = store._db.execute("PRAGMA page_count").fetchone()[0]
                store._db.execute(f"PRAGMA max_page_count={pages}")
                spec = pb.PipelineSpec(name="big")
                for i in range(2000):
                    spec.tasks.add(name=f"t{i}").command.argv.append("x" * 100)
                with pytest.raises(StoreFault, match="disk is full"):
                    await engine.submit(spec, idempotency_key="big")
                with pytest.raises(StoreFault):
                    await engine.wait()
                assert len(await store.list_runs(10)) == 1  # only the run committed before
                assert (await store.get_run(kept)) is not None
            finally:
                await engine.stop()

    asyncio.run(scenario())
