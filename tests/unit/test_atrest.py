"""Encryption at rest, the pure parts and the stores: xpipe.security._atrest and its users."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from xpipe._codec import read_artifact
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._events import RunRecord, TaskRecord
from xpipe.coordinator._logs import TaskLogStore
from xpipe.coordinator._store import SQLiteStore, StoreRefused
from xpipe.security import DecryptionError, SecurityConfigError, _atrest
from xpipe.security._atrest import AtRest, is_sealed, open_value, sealed_key_id
from xpipe.security._keys import create_keyring, rotate_keyring
from xpipe.worker._daemon import EncryptionMismatch, check_encryption
from xpipe.worker._objects import write_artifact

MARK = b"MARKER-7f3a-secret"


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    create_keyring(path)
    return path


@pytest.fixture
def process_key(keyfile: Path):
    """This process seals artifacts with ``keyfile`` for the test, as a daemon would."""
    crypt = AtRest(keyfile)
    _atrest.configure(crypt)
    try:
        yield crypt
    finally:
        _atrest.configure(None)


def test_seal_open_round_trip_bound_to_its_place_and_plain_values_pass(keyfile):
    crypt = AtRest(keyfile)
    sealed = crypt.seal(MARK, b"result:r1/t")
    assert is_sealed(sealed) and MARK not in sealed and sealed_key_id(sealed) == crypt.active_key_id
    assert open_value(crypt, sealed, b"result:r1/t", "x") == MARK
    with pytest.raises(DecryptionError, match="cannot decrypt result of r2/t: .*failed authentication"):
        open_value(crypt, sealed, b"result:r2/t", "result of r2/t")  # copied to another row
    # Written before encryption was turned on: read as it is, with or without a keyring.
    for plain in (b"", b"\x08\x01", b"(\xb5/\xfd", MARK):
        assert open_value(crypt, plain, b"any", "x") == plain and open_value(None, plain, b"any", "x") == plain


def test_sealed_data_without_a_keyring_names_the_key_id_and_the_flag(keyfile):
    crypt = AtRest(keyfile)
    with pytest.raises(DecryptionError, match=rf"spec of r1 is encrypted at rest \(key id '{crypt.active_key_id}'\) "
                                              r"but no --encryption-key-file was given"):  # fmt: skip
        open_value(None, crypt.seal(MARK, b"a"), b"a", "spec of r1")


def test_a_rotation_is_picked_up_and_old_blobs_stay_readable(keyfile, monkeypatch):
    reader = AtRest(keyfile)
    old = reader.seal(MARK, b"p")
    new_id = rotate_keyring(keyfile)
    # Within the second since the last look, sealing keeps the ring in memory (no stat per seal).
    assert sealed_key_id(reader.seal(MARK, b"p")) != new_id
    monkeypatch.setattr(_atrest, "RELOAD_CHECK_S", 0.0)
    newer = reader.seal(MARK, b"p")
    assert sealed_key_id(newer) == new_id and reader.active_key_id == new_id
    assert reader.open(old, b"p", "old") == MARK and reader.open(newer, b"p", "new") == MARK


def test_an_unknown_key_id_rereads_the_file_at_once_then_names_the_id(keyfile, tmp_path):
    stale = AtRest(keyfile)
    rotate_keyring(keyfile)
    fresh = AtRest(keyfile).seal(MARK, b"p")  # sealed by a daemon that saw the rotation first
    assert stale.open(fresh, b"p", "x") == MARK  # no wait for the once-a-second check
    other = tmp_path / "other.json"
    create_keyring(other)
    foreign = AtRest(other).seal(MARK, b"p")
    with pytest.raises(DecryptionError, match=rf"key id '{sealed_key_id(foreign)}' is not in keyring {keyfile}"):
        stale.open(foreign, b"p", "x")


def test_a_keyring_broken_while_running_keeps_the_keys_in_use(keyfile):
    crypt = AtRest(keyfile)
    sealed = crypt.seal(MARK, b"p")
    keyfile.write_text("{half written")
    assert crypt.refresh(force=True) is False
    assert crypt.open(sealed, b"p", "x") == MARK


def test_a_missing_or_malformed_keyring_is_refused_naming_the_file(tmp_path):
    with pytest.raises(SecurityConfigError, match=f"keyring {tmp_path / 'nope.json'}: cannot read"):
        AtRest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "active": "k1", "keys": [{"id": "k1", "key": "c2hvcnQ="}]}')
    with pytest.raises(SecurityConfigError, match=rf"keyring {bad}: malformed: keys\[0\] \(k1\) is 5 bytes, expected 32"):
        AtRest(bad)


def test_artifacts_are_sealed_under_a_name_that_says_so_and_read_back(tmp_path, process_key):
    root = tmp_path / "artifacts"
    root.mkdir()
    ref = write_artifact(str(root), ("run1", "big", 2), MARK * 1000)
    assert ref == f"file://{root}/run1/big.2.xpe"
    on_disk = (root / "run1" / "big.2.xpe").read_bytes()
    assert MARK not in on_disk and sealed_key_id(on_disk) == process_key.active_key_id
    assert read_artifact(ref, artifact_root=str(root)) == MARK * 1000
    # Moved to another attempt's name: its place no longer matches.
    os.replace(root / "run1" / "big.2.xpe", root / "run1" / "big.3.xpe")
    with pytest.raises(DecryptionError, match="artifact run1/big.3.xpe.*failed authentication"):
        read_artifact(f"file://{root}/run1/big.3.xpe", artifact_root=str(root))
    # A file named as sealed that is not: refused, not served as it is.
    (root / "run1" / "fake.1.xpe").write_bytes(MARK)
    with pytest.raises(DecryptionError, match="named .xpe but is not sealed"):
        read_artifact(f"file://{root}/run1/fake.1.xpe", artifact_root=str(root))


def test_without_a_keyring_artifacts_stay_plain_and_sealed_ones_are_refused(tmp_path, keyfile):
    root = tmp_path / "artifacts"
    root.mkdir()
    ref = write_artifact(str(root), ("run1", "big", 1), MARK)
    assert ref.endswith("/run1/big.1") and (root / "run1" / "big.1").read_bytes() == MARK
    sealed_path = root / "run1" / "big.2.xpe"
    sealed_path.write_bytes(AtRest(keyfile).seal(MARK, b"artifact:run1/big.2"))
    with pytest.raises(DecryptionError, match="is encrypted at rest .* no --encryption-key-file"):
        read_artifact(f"file://{sealed_path}", artifact_root=str(root))


def _mark(run_id: str) -> bytes:
    return MARK + b"-" + run_id.encode()


def _records(run_id: str) -> list:
    """A run whose spec argument, result, error, traceback and story all hold its marker."""
    mark = _mark(run_id)
    spec = pb.PipelineSpec(name="p", tasks=[pb.TaskSpec(name="t", python=pb.PythonCall(import_path="m:f"))])
    spec.tasks[0].args.data = mark
    err = pb.TaskError(error_type="TASK_FAILURE", message=mark.decode(), traceback=mark.decode())
    history = ((1.0, "s1", run_id, "u", 1, pb.RUNNING, pb.RETRY_WAIT, mark.decode()),)
    return [
        RunRecord(run_id, "p", pb.RUN_RUNNING, 1.0, 0.0, 2, spec),
        TaskRecord(run_id, "t", pb.SUCCEEDED, 1, "w", 1.0, 2.0, None,
                   pb.Payload(codec=pb.CODEC_RAW, data=mark, size_bytes=len(mark))),
        TaskRecord(run_id, "u", pb.FAILED, 2, "w", 1.0, 2.0, err, None, history=history),
    ]  # fmt: skip


def _db_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_the_sqlite_store_seals_every_data_column_and_reads_plain_rows_from_before(tmp_path, keyfile):
    path = tmp_path / "xpipe.db"

    async def main():
        async with SQLiteStore(path) as plain:  # written before encryption was turned on
            await plain.commit(_records("old"))
        assert _mark("old") in _db_bytes(path)  # the grep sees plain rows (result, error, story)
        async with SQLiteStore(path, crypt=AtRest(keyfile)) as store:
            await store.commit(_records("new"))
            # Read while open: the new rows are in the WAL.
            assert _mark("new") not in _db_bytes(path)
            new = await store.get_run("new", with_results=True)
            old = await store.get_run("old", with_results=True)
        return new, old

    new, old = asyncio.run(main())
    for stored in (new, old):
        mark = _mark(stored.header.run_id)
        assert stored.spec.tasks[0].args.data == mark
        assert stored.tasks["t"].result.data == mark
        assert stored.tasks["u"].error.traceback == mark.decode() and stored.tasks["u"].history[0][7] == mark.decode()
    assert _mark("new") not in _db_bytes(path)  # after the checkpoint at close too


def test_a_store_once_encrypted_is_refused_without_the_keyring(tmp_path, keyfile):
    path = tmp_path / "xpipe.db"

    async def main():
        async with SQLiteStore(path, crypt=AtRest(keyfile)) as store:
            await store.commit(_records("r"))
        async with SQLiteStore(path):
            pass

    with pytest.raises(StoreRefused, match=rf"store database {path} is encrypted at rest \(first key id k\w+\): "
                                           "start the coordinator with --encryption-key-file"):  # fmt: skip
        asyncio.run(main())


def test_task_logs_are_sealed_per_attempt_and_read_back(tmp_path, keyfile):
    path = tmp_path / "task-logs.db"
    batch = worker_pb2.TaskLogBatch()
    batch.entries.add(attempt=worker_pb2.AttemptRef(run_id="r", task="t", attempt=1), stream=1, data=MARK)

    async def main():
        async with TaskLogStore(path, crypt=AtRest(keyfile)) as store:
            store.append(batch, now=1.0)
            rows = await store.read("r")
            assert MARK not in _db_bytes(path)
        async with TaskLogStore(path) as blind:
            with pytest.raises(DecryptionError, match="task log of r/t attempt 1 is encrypted at rest"):
                await blind.read("r")
        return rows

    assert [r.data for r in asyncio.run(main())] == [MARK]


def test_a_worker_and_a_coordinator_that_disagree_are_named(keyfile):
    crypt = AtRest(keyfile)
    check_encryption("c:1", True, crypt)
    check_encryption("c:1", False, None)
    with pytest.raises(EncryptionMismatch, match="coordinator c:1 encrypts data at rest but this worker has no"):
        check_encryption("c:1", True, None)
    with pytest.raises(EncryptionMismatch, match=f"this worker has --encryption-key-file {keyfile} but coordinator c:1"):
        check_encryption("c:1", False, crypt)
