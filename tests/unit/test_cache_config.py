"""The cache config and task settings: what is accepted, and errors that name the key."""

from __future__ import annotations

import pytest

from xpipe import Pipeline, PipelineValidationError, Task, task
from xpipe.cache import REDIS_URL_ENV, CacheSettings, code_id, parse_cache_config
from xpipe.cache._spec import apply_cache

SEED = {
    "l1_cache": {"type": "memory", "size": "2GB", "ttl": "1h"},
    "l2_cache": {"type": "redis", "size": "10GB", "ttl": "24h"},
    "l3_cache": {"type": "disk", "size": "100GB", "ttl": "7d"},
}


def test_the_seed_dict_is_read_with_sizes_ttls_and_the_redis_url_from_the_environment():
    config = parse_cache_config(SEED, env={REDIS_URL_ENV: "redis://127.0.0.1:6379/2"})
    l1, l2, l3 = config.levels
    assert (l1.name, l1.type, l1.size_bytes, l1.ttl_s) == ("l1_cache", "memory", 2 * 10**9, 3600.0)
    assert (l2.type, l2.size_bytes, l2.ttl_s, l2.url) == ("redis", 10 * 10**9, 86400.0, "redis://127.0.0.1:6379/2")
    assert (l3.type, l3.size_bytes, l3.ttl_s) == ("disk", 100 * 10**9, 7 * 86400.0)
    assert l2.prefix == "xpipe:cache"


def test_levels_keep_the_order_given():
    config = parse_cache_config({"b": {"type": "disk", "size": "1GiB"}, "a": {"type": "memory"}}, env={})
    assert [level.name for level in config.levels] == ["b", "a"]
    assert config.levels[0].size_bytes == 2**30 and config.levels[1].size_bytes == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"l1": {"type": "memory", "sise": "1GB"}}, r"'l1': unknown keys \['sise'\]"),
        ({"l1": {"type": "memcached"}}, r"'l1': type must be one of \['memory', 'redis', 'disk'\], got 'memcached'"),
        ({"l1": {"type": "memory", "size": "2 parsecs"}}, r"'l1': size '2 parsecs' is not a memory quantity"),
        ({"l1": {"type": "memory", "size": 0}}, r"'l1': size must be at least 1 byte"),
        ({"l1": {"type": "memory", "ttl": "1 fortnight"}}, r"'l1': ttl '1 fortnight'"),
        ({"l1": {"type": "memory", "ttl": 0}}, r"'l1': ttl must be > 0"),
        ({"l2": {"type": "redis"}}, r"'l2': a redis level needs 'url'.*XPIPE_CACHE_REDIS_URL"),
        ({"l2": {"type": "redis", "url": "http://x"}}, r"'l2': url must look like redis://HOST:PORT/DB"),
        ({"l1": {"type": "memory", "path": "/tmp"}}, r"'l1': 'path' is for type 'disk'"),
        ({"l1": "memory"}, r"'l1': must be a dict"),
        ({}, r"cache config has no level"),
        ([1], r"cache config must be a dict of levels"),
    ],
)
def test_a_bad_config_is_refused_naming_the_level_and_key(config, message):
    with pytest.raises(ValueError, match=message):
        parse_cache_config(config, env={})


def test_task_cache_settings_are_checked():
    t = Task("t", print, cache=True, cache_ttl="1h", cache_version=2)
    assert t.cache == CacheSettings(3600.0, "2")

    @task(cache=True, cache_ttl=30)
    def decorated():
        return 1

    assert decorated.cache == CacheSettings(30.0, "")
    with pytest.raises(PipelineValidationError, match=r"task 't': cache_ttl and cache_version need cache=True"):
        Task("t", print, cache_ttl="1h")
    with pytest.raises(PipelineValidationError, match=r"task 't' cache_ttl: ttl 'soon'"):
        Task("t", print, cache=True, cache_ttl="soon")
    with pytest.raises(PipelineValidationError, match=r"cache must be True or False, got 'yes'"):
        Task("t", print, cache="yes")


def _spec(pipeline: Pipeline):
    return {t.name: t for t in pipeline.to_proto().tasks}


def test_only_cached_tasks_get_a_cache_spec_and_a_pipeline_default_applies_unless_opted_out():
    p = Pipeline("p")
    p.add_task(Task("a", print, cache=True))
    p.add_task(Task("b", print))
    p.add_task(Task("c", print, cache=False))
    specs = _spec(p)
    assert specs["a"].HasField("cache") and not specs["b"].HasField("cache") and not specs["c"].HasField("cache")
    assert [level.type for level in specs["a"].cache.levels] == ["memory"]  # the default L1
    p.enable_cache(ttl="10min")
    specs = _spec(p)
    assert specs["b"].cache.ttl_s == 600.0 and not specs["c"].HasField("cache")


def _code_id(func, version="", pipeline="p", name="t", namespace=None):
    p = Pipeline(pipeline, namespace=namespace)
    p.add_task(Task(name, func, cache=True, cache_version=version or None))
    return p.to_proto().tasks[0].cache.code_id


def f1(x):
    return x + 1


def f2(x):
    return x + 2


def test_the_code_identity_changes_with_the_code_the_version_and_the_names():
    base = _code_id(f1)
    assert base == _code_id(f1)
    assert base != _code_id(f2)
    assert base != _code_id(f1, version="2")
    assert base != _code_id(f1, pipeline="q")
    assert base != _code_id(f1, name="u")
    assert base != _code_id(f1, namespace="team-b"), "tenants' entries stay apart"
    assert base == _code_id(f1, namespace="default")
    # a pickled (not importable) callable: by its content
    assert _code_id(lambda x: x + 1) != _code_id(lambda x: x + 3)


def test_apply_cache_sets_levels_and_generation():
    p = Pipeline("p")
    p.add_task(Task("a", print, cache=True))
    spec = p.to_proto()
    apply_cache(p, spec, parse_cache_config({"d": {"type": "disk", "path": "/tmp/x"}}), {"a": 7})
    cache = spec.tasks[0].cache
    assert cache.generation == 7 and cache.pipeline == "p" and [lv.name for lv in cache.levels] == ["d"]
    assert cache.code_id == code_id(spec.tasks[0], print, "", "p")
