"""The cache levels on their own: LRU size bounds, TTLs, corrupt entries, a real Redis."""

from __future__ import annotations

import os

import pytest

from xpipe import Pipeline, PipelineManager, Task
from xpipe._proto import common_pb2
from xpipe.cache import CacheLevelConfig, CacheLevelDown, DiskLevel, MemoryLevel, MultiLevelCache, RedisLevel
from xpipe.cache._levels import namespace
from xpipe.cache._multi import effective_ttl_s

NS = namespace("p", "t")


def test_memory_level_is_an_lru_bounded_by_bytes():
    level = MemoryLevel(CacheLevelConfig("l1", "memory", size_bytes=300))
    for key in "abc":
        level.put(NS, key, key.encode() * 100, 0)
    assert level.get(NS, "a", 0) == b"a" * 100  # a is now the most recently used
    level.put(NS, "d", b"d" * 100, 0)  # over 300 bytes: the least recently used (b) goes
    assert level.get(NS, "b", 0) is None
    assert [level.get(NS, k, 0) is not None for k in "acd"] == [True, True, True]
    assert level.bytes == 300
    level.put(NS, "huge", b"x" * 301, 0)  # never fits: not stored, nothing evicted for it
    assert level.get(NS, "huge", 0) is None and len(level) == 3


def test_memory_level_ttl_and_invalidation(monkeypatch):
    import xpipe.cache._levels as levels

    level = MemoryLevel(CacheLevelConfig("l1", "memory"))
    now = [1000.0]
    monkeypatch.setattr(levels.time, "time", lambda: now[0])
    level.put(NS, "k", b"v", 10)
    now[0] += 10
    assert level.get(NS, "k", 10) == b"v"
    now[0] += 0.5
    assert level.get(NS, "k", 10) is None  # expired: a miss, and dropped
    level.put(NS, "k", b"v", 0)
    level.put(namespace("p", "other"), "k", b"v", 0)
    assert level.invalidate(NS) == 1 and level.get(namespace("p", "other"), "k", 0) == b"v"
    assert level.invalidate(namespace("p")) == 1 and len(level) == 0


def test_disk_level_is_an_lru_bounded_by_bytes(tmp_path):
    level = DiskLevel(CacheLevelConfig("l3", "disk", size_bytes=3 * (44 + 1000), path=str(tmp_path)))
    for i, key in enumerate("abc"):
        level.put(NS, key, key.encode() * 1000, 0)
        os.utime(os.path.join(level.root, NS, key), (1000 + i, 1000 + i))  # a clear order of use
    assert level.get(NS, "a", 0) == b"a" * 1000  # touches a: b is now the oldest
    level.put(NS, "d", b"d" * 1000, 0)
    assert level.get(NS, "b", 0) is None
    assert all(level.get(NS, k, 0) is not None for k in "acd")
    total = sum(os.path.getsize(os.path.join(level.root, NS, k)) for k in "acd")
    assert total <= level.config.size_bytes


def test_a_corrupt_disk_entry_is_a_miss_and_is_removed(tmp_path):
    level = DiskLevel(CacheLevelConfig("l3", "disk", path=str(tmp_path)))
    level.put(NS, "k", b"payload", 0)
    path = os.path.join(level.root, NS, "k")
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"XXX")
    assert level.get(NS, "k", 0) is None
    assert not os.path.exists(path)
    with open(path, "wb") as f:
        f.write(b"short")
    assert level.get(NS, "k", 0) is None


def test_disk_level_that_cannot_be_written_is_down(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    level = DiskLevel(CacheLevelConfig("l3", "disk", path=str(blocker)))
    with pytest.raises(CacheLevelDown, match=r"disk level 'l3'"):
        level.put(NS, "k", b"v", 0)


def test_effective_ttl_is_the_shorter_one():
    level = CacheLevelConfig("l", "memory", ttl_s=60)
    assert effective_ttl_s(level, 0) == 60 and effective_ttl_s(level, 5) == 5
    assert effective_ttl_s(CacheLevelConfig("l", "memory"), 0) == 0


def _spec(*levels: CacheLevelConfig) -> common_pb2.CacheSpec:
    return common_pb2.CacheSpec(code_id="c", pipeline="p", levels=[lv.to_proto() for lv in levels])


def test_a_hit_in_a_slower_level_back_fills_the_faster_ones(tmp_path):
    l1 = CacheLevelConfig("l1", "memory")
    l3 = CacheLevelConfig("l3", "disk", path=str(tmp_path))
    writer = MultiLevelCache()
    writer.store(_spec(l3), "t", "key", b"value")  # only in L3
    cache = MultiLevelCache()
    found = cache.lookup(_spec(l1, l3), "t", "key")
    assert (found.payload, found.level) == (b"value", "l3")
    found = cache.lookup(_spec(l1, l3), "t", "key")
    assert (found.payload, found.level) == (b"value", "l1")
    assert cache.hits == {"l3": 1, "l1": 1} and cache.misses == 0
    assert cache.lookup(_spec(l1, l3), "t", "other").payload is None and cache.misses == 1


def test_redis_level_bounds_its_size_and_honours_ttl(redis_server, broker_ns):
    url = f"redis://{redis_server.address}/0"
    level = RedisLevel(CacheLevelConfig("l2", "redis", size_bytes=3 * (44 + 1000), url=url, prefix=broker_ns))
    try:
        for key in "abc":
            level.put(NS, key, key.encode() * 1000, 0)
        assert level.get(NS, "a", 0) == b"a" * 1000  # a used last: b is the least recently used
        level.put(NS, "d", b"d" * 1000, 0)
        assert level.get(NS, "b", 0) is None
        assert all(level.get(NS, k, 0) is not None for k in "acd")
        with redis_server.client() as r:
            assert int(r.get(f"{broker_ns}:bytes")) == 3 * 1044
            level.put(NS, "ttl", b"v", 60)
            assert 0 < r.pttl(f"{broker_ns}:e:{NS.replace('/', ':')}:ttl") <= 60_000
            # the small entry took the total over the bound: the least recently used went
            assert int(r.get(f"{broker_ns}:bytes")) == 2 * 1044 + 45
        assert level.invalidate(namespace("p")) == 3
        assert level.get(NS, "a", 0) is None
        with redis_server.client() as r:
            assert int(r.get(f"{broker_ns}:bytes")) == 0 and r.zcard(f"{broker_ns}:lru") == 0
        assert level.bump_generation("p\0t") == 1 and level.generations(["p\0t", "x"]) == [1, 0]
    finally:
        level.close()


def test_a_redis_level_with_nothing_listening_is_down_and_skipped_for_a_while():
    from tests.harness import free_port

    level = RedisLevel(CacheLevelConfig("l2", "redis", url=f"redis://127.0.0.1:{free_port()}/0", prefix="x"))
    with pytest.raises(CacheLevelDown, match=r"redis level 'l2' at redis://127\.0\.0\.1:\d+/0: ConnectionError"):
        level.get(NS, "k", 0)
    with pytest.raises(CacheLevelDown, match=r"is down \(retried after 30 s\)"):
        level.put(NS, "k", b"v", 0)
    cache = MultiLevelCache()
    spec = _spec(CacheLevelConfig("l2", "redis", url=level.config.url, prefix="x"), CacheLevelConfig("l1", "memory"))
    assert cache.store(spec, "t", "k", b"v")[0].startswith("result cache level 'l2' unavailable, using the others")
    found = cache.lookup(spec, "t", "k")
    assert found.payload == b"v" and found.level == "l1" and "unavailable" in found.warnings[0]


def test_a_bad_cache_config_stops_the_manager_before_anything_starts():
    with pytest.raises(ValueError, match=r"cache config 'l1_cache': unknown keys \['sizee'\]"):
        PipelineManager(config={"cache": {"l1_cache": {"type": "memory", "sizee": "1GB"}}}, coordinator="127.0.0.1:9")
    pm = PipelineManager(coordinator="127.0.0.1:9", connect_timeout_s=0.5)
    try:
        with pytest.raises(ValueError, match=r"'l2': a redis level needs 'url'"):
            pm.configure_cache({"l2": {"type": "redis"}})
        with pytest.raises(TypeError, match=r"one-argument form warm_cache\(inputs\) works only inside"):
            pm.warm_cache([1, 2])
        p = Pipeline("p")
        p.add_task(Task("a", print, cache=True))
        p.add_task(Task("b", print, depends_on=["a"]))
        with pytest.raises(TypeError, match=r"for a whole pipeline, inputs must be a dict of task name"):
            pm.warm_cache(p, inputs=[1])
        with pytest.raises(ValueError, match=r"pipeline 'p' has no tasks \['zz'\]"):
            pm.warm_cache(p, inputs={"zz": 1})
        with pytest.raises(ValueError, match=r"task 'b' of pipeline 'p' is not cached"):
            pm.warm_cache(p, task="b", inputs=[1])
        p.add_task(Task("c", print, depends_on=["a", "b"], cache=True))
        with pytest.raises(ValueError, match=r"task 'c' takes 2 upstream inputs \(\['a', 'b'\]\), got 1"):
            pm.warm_cache(p, task="c", inputs=[1])
        with pytest.raises(ValueError, match=r"task 'c' needs inputs for \['a', 'b'\]; missing \['b'\], unknown \['x'\]"):
            pm.warm_cache(p, task="c", inputs={"a": 1, "x": 2})
        with pytest.raises(ValueError, match=r"invalidate_cache\(task=\.\.\.\) needs the pipeline too"):
            pm.invalidate_cache(task="t")
    finally:
        pm.close()
