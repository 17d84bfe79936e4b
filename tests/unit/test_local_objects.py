"""The worker-local object store (xpipe.worker._objects): bounded memory, written-once files."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from xpipe import _codec
from xpipe._proto import worker_pb2
from xpipe.worker._objects import LocalObjects, store_result
from xpipe.worker._runtask import LOCAL_OBJECTS, run_assignment

from tests import helpers_payload as hp


def test_least_recently_used_results_are_dropped_past_the_byte_bound():
    objects = LocalObjects(max_bytes=10)
    objects.put("a", b"aaaa")
    objects.put("b", b"bbbb")
    assert objects.get("a") == b"aaaa"  # a is now the most recent
    objects.put("c", b"cccc")  # 12 bytes: b, the least recent, goes
    assert objects.get("b") is None and objects.get("c") == b"cccc" and objects.get("a") == b"aaaa"
    assert objects.size_bytes == 8 and (objects.hits, objects.misses) == (3, 1)
    objects.put("huge", b"h" * 11)  # bigger than the bound: never kept
    assert objects.get("huge") is None and objects.size_bytes == 8
    objects.clear()
    assert objects.get("a") is None and objects.size_bytes == 0


def test_a_result_is_written_once_privately_and_kept(tmp_path):
    objects = LocalObjects()
    ref = store_result(objects, str(tmp_path), ("run1", "make", 2), b"payload")
    path = tmp_path / "run1" / "make.2"
    assert ref == f"file://{path}" and path.read_bytes() == b"payload"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "run1") == ["make.2"]  # no temporary left behind
    assert objects.get(ref) == b"payload"


def test_without_an_artifact_directory_nothing_is_written(tmp_path):
    objects = LocalObjects()
    assert store_result(objects, "", ("r", "t", 1), b"x") == ""
    assert store_result(objects, str(tmp_path / "not-mounted"), ("r", "t", 1), b"x") == ""
    assert not (tmp_path / "not-mounted").exists() and objects.size_bytes == 0


def test_an_unwritable_directory_raises_and_keeps_nothing(tmp_path):
    (tmp_path / "r").write_text("a file where the run's directory should be")
    objects = LocalObjects()
    with pytest.raises(OSError):
        store_result(objects, str(tmp_path), ("r", "t", 1), b"x")
    assert objects.size_bytes == 0


def _assignment(run_id: str, name: str, call: str, *, args: tuple = (), upstream: tuple = ()):
    a = worker_pb2.Assignment()
    a.attempt.run_id, a.attempt.task, a.attempt.attempt = run_id, name, 1
    a.task.name = name
    a.task.python.import_path = call
    a.task.args.CopyFrom(_codec.encode((args, {})))
    for source, payload in upstream:
        a.task.depends_on.append(source)
        a.upstream.append(payload)
    return a


def test_the_executor_writes_a_big_result_itself_and_serves_it_to_the_next_task_from_memory(tmp_path):
    root = str(tmp_path)
    made = run_assignment(
        _assignment("r1", "make", "tests.helpers_payload:big", args=(7,)), None, {}, artifact_root=root
    )
    result = made.succeeded.result
    assert result.data == b"" and result.artifact_ref == f"file://{tmp_path}/r1/make.1"
    assert hp.big(7) in (tmp_path / "r1" / "make.1").read_bytes()  # the pickled value, uncompressed
    hits = LOCAL_OBJECTS.hits
    use = _assignment("r1", "use", "tests.helpers_payload:digest", upstream=(("make", result),))
    used = run_assignment(use, None, {}, artifact_root=root)
    assert _codec.decode(used.succeeded.result) == hashlib.sha256(hp.big(7)).hexdigest()
    assert LOCAL_OBJECTS.hits == hits + 1  # from memory, not from the file


def test_a_result_the_executor_cannot_write_stays_inline(tmp_path):
    (tmp_path / "r2").write_text("a file where the run's directory should be")
    made = run_assignment(_assignment("r2", "make", "tests.helpers_payload:big", args=(8,)), None, {},
                          artifact_root=str(tmp_path))  # fmt: skip
    # The daemon tries the write again (and logs why it fails); the result is still whole.
    assert made.succeeded.result.artifact_ref == "" and len(made.succeeded.result.data) > hp.BIG_BYTES
