"""The stored audit log: queueing, batching, the chain across batches, the head, faults.

Runs against both stores (SQLite, and a real etcd server), through the same Store methods
the coordinator uses.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import EtcdServer
from xpipe.coordinator._auditlog import AuditLog, outcome_fields
from xpipe.coordinator._etcd_store import EtcdStore, Fence
from xpipe.coordinator._store import SQLiteStore, Store, StoreFault
from xpipe.security._audit import GENESIS_HASH, verify

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "etcd"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        path = tmp_path / "audit.sqlite"
        return lambda: SQLiteStore(path)
    server = request.getfixturevalue("shared_etcd")
    cluster = f"audit{next(_names)}"
    return lambda: EtcdStore([server.endpoint], cluster=cluster, artifact_dir=tmp_path / "artifacts")


async def _read_all(store: Store):
    page = await store.read_audit(limit=10_000)
    return page.entries, page


def _record(log: AuditLog, n: int, *, who: str = "local", start: int = 0) -> None:
    for i in range(start, start + n):
        log.record(principal=who, action="/xpipe.v1.PipelineService/CancelRun", target=f"run{i}", stimulus_id=f"s{i}")


def test_entries_are_batched_chained_and_continue_after_a_restart(make_store) -> None:
    async def main() -> None:
        store = make_store()
        async with store:
            log = AuditLog(store, batch_entries=7, interval_s=0.01)
            _record(log, 20)
            assert log.queued == 20, "record() stored synchronously: it must only queue"
            await log.stop()
            assert log.queued == 0 and log.written == 20
            entries, page = await _read_all(store)
            assert [e.seq for e in entries] == list(range(1, 21))
            assert [e.target for e in entries] == [f"run{i}" for i in range(20)]
            assert page.head_seq == 20 and page.head_hash == entries[-1].hash
            assert verify(entries, expected_head=page.head_hash) is None
        async with make_store() as again:  # a restarted coordinator continues the chain from the head
            log = AuditLog(again, interval_s=0.01)
            _record(log, 3, start=20)
            await log.stop()
            entries, page = await _read_all(again)
            assert [e.seq for e in entries] == list(range(1, 24))
            assert entries[20].prev_hash == entries[19].hash
            assert verify(entries, expected_head=page.head_hash) is None

    asyncio.run(main())


def test_the_writer_batches_in_the_background_within_the_interval(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            log = AuditLog(store, batch_entries=50, interval_s=0.05)
            _record(log, 120)  # a full batch wakes the writer at once; the rest waits out the interval
            for _ in range(200):
                if log.written == 120:
                    break
                await asyncio.sleep(0.01)
            assert log.written == 120 and log.queued == 0
            entries, page = await _read_all(store)
            assert verify(entries, expected_head=page.head_hash) is None
            await log.stop()

    asyncio.run(main())


def test_removing_the_newest_entries_is_caught_by_the_head(tmp_path: Path) -> None:
    async def main() -> None:
        async with SQLiteStore(tmp_path / "a.sqlite") as store:
            log = AuditLog(store)
            _record(log, 5)
            await log.stop()
        db = sqlite3.connect(tmp_path / "a.sqlite")
        db.execute("DELETE FROM audit WHERE seq >= 4")
        db.commit()
        db.close()
        async with SQLiteStore(tmp_path / "a.sqlite") as store:
            entries, page = await _read_all(store)
            assert [e.seq for e in entries] == [1, 2, 3]
            assert verify(entries) is None, "the chain alone cannot see a cut tail"
            problem = verify(entries, expected_head=page.head_hash)
            assert problem is not None and problem.kind == "removed" and problem.seq == 4

    asyncio.run(main())


def test_a_refusal_status_becomes_outcome_refused_with_the_status_kept() -> None:
    assert outcome_fields("ok") == ("ok", {})
    kind, detail = outcome_fields("PERMISSION_DENIED: principal 'v' lacks permission run:submit")
    assert kind == "refused" and detail["status"].endswith("lacks permission run:submit")
    assert outcome_fields("UNAVAILABLE: store down")[0] == "failed"


class _RefusingStore(SQLiteStore):
    """A real SQLite store whose audit writes fail while ``refuse`` is set (a full disk, say)."""

    refuse = True

    async def append_audit(self, entries) -> None:
        if self.refuse:
            raise StoreFault("the store refused a write (database or disk is full)", disk_full=True)
        await super().append_audit(entries)


def test_a_refusing_store_keeps_entries_queued_to_a_bound_then_counts_drops_on_record(tmp_path: Path) -> None:
    async def main() -> None:
        async with _RefusingStore(tmp_path / "f.sqlite") as store:
            log = AuditLog(store, batch_entries=2, interval_s=0.01, max_queued=4)
            _record(log, 6)
            assert log.queued == 4 and log.dropped == 2
            with pytest.raises(StoreFault):
                await log.flush()
            assert log.queued == 4, "a failed write lost queued entries"
            store.refuse = False
            await log.stop()
            entries, page = await _read_all(store)
            # The drop is in the chain: an audit.dropped entry with the count, then the kept ones.
            assert [(e.action, dict(e.detail).get("count")) for e in entries][0] == ("audit.dropped", "2")
            assert [e.target for e in entries[1:]] == ["run0", "run1", "run2", "run3"]
            assert verify(entries, expected_head=page.head_hash) is None

    asyncio.run(main())


def test_a_coordinator_that_does_not_lead_writes_nothing_and_continues_the_leaders_chain(shared_etcd, tmp_path) -> None:
    async def main() -> None:
        cluster = f"ha{next(_names)}"
        a = EtcdStore([shared_etcd.endpoint], cluster=cluster, artifact_dir=tmp_path / "a")
        b = EtcdStore([shared_etcd.endpoint], cluster=cluster, artifact_dir=tmp_path / "b")
        async with a, b:
            leading = {"a": True, "b": False}
            log_a = AuditLog(a, leading=lambda: leading["a"], interval_s=0.01)
            log_b = AuditLog(b, leading=lambda: leading["b"], interval_s=0.01)
            _record(log_a, 3, who="alice")
            _record(log_b, 2, who="bob")
            await log_a.flush()
            await log_b.flush()
            assert log_b.queued == 2 and (await b.audit_head())[0] == 3, "a follower wrote audit entries"
            # b becomes leader: its queued entries follow a's head. A fenced write of the deposed a fails.
            leading.update(a=False, b=True)
            a.fence = Fence(a.leader_key, -1)
            await log_b.flush()
            entries, page = await _read_all(b)
            assert [e.principal for e in entries] == ["alice"] * 3 + ["bob"] * 2
            assert verify(entries, expected_head=page.head_hash) is None
            await log_a.stop()
            await log_b.stop()

    asyncio.run(main())


def test_paging_and_filters(make_store) -> None:
    async def main() -> None:
        async with make_store() as store:
            log = AuditLog(store)
            _record(log, 5, who="alice")
            _record(log, 5, who="bob", start=5)
            await log.stop()
            first = await store.read_audit(limit=4)
            assert [e.seq for e in first.entries] == [1, 2, 3, 4] and first.more
            rest = await store.read_audit(after_seq=first.next_after_seq, limit=100)
            assert [e.seq for e in rest.entries] == list(range(5, 11)) and not rest.more
            bob = await store.read_audit(principal="bob", limit=100)
            assert {e.principal for e in bob.entries} == {"bob"} and len(bob.entries) == 5
            for i in range(10):  # interleaved: a filtered page spans several scanned chunks
                _record(log2 := AuditLog(store), 1, who="carol" if i % 3 == 0 else "dave", start=100 + i)
                await log2.stop()
            pages, after = [], 0
            while True:
                page = await store.read_audit(principal="carol", limit=2, after_seq=after)
                pages.append([e.target for e in page.entries])
                if not page.more:
                    break
                after = page.next_after_seq
            assert [t for p in pages for t in p] == ["run100", "run103", "run106", "run109"], pages
            assert all(len(p) <= 2 for p in pages)
            late = await store.read_audit(since=bob.entries[2].at, limit=100)
            assert all(e.at >= bob.entries[2].at for e in late.entries) and late.entries
            assert (await store.audit_head())[1] != GENESIS_HASH

    asyncio.run(main())
