"""The result cache on a real cluster: hits skip the code, misses run it, levels degrade.

Each task appends its name to a counter file when its code runs (``tests/helpers_cache``),
so "no task code ran" is read off the file, not inferred from timings.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from tests import helpers_cache as h
from tests.harness import Cluster, child_env, eventually
from tests.helpers_brokers import RedisServer
from xpipe import Pipeline, PipelineManager, Task

IMPORTS = ("tests.helpers_tasks", "tests.helpers_cache")


def _etl(counter: str, n: int = 5, *, version: str | None = None, load=h.load, name: str = "etl") -> Pipeline:
    p = Pipeline(name)
    p.add_task(Task("extract", h.extract, args=(counter, n), cache=True))
    p.add_task(Task("transform", h.transform, depends_on=["extract"], args=(counter,), cache=True,
                    cache_version=version))  # fmt: skip
    p.add_task(Task("load", load, depends_on=["transform"], args=(counter,), cache=True))
    return p


def _hits(result) -> dict[str, bool]:
    return {name: t.cache_hit for name, t in result.tasks.items()}


def _cluster(tmp_path: Path, workers: int = 1, **kw) -> Cluster:
    return Cluster(tmp_path, workers=workers, slots=2, imports=IMPORTS,
                   worker_args=("--cache-dir", str(tmp_path / "worker-cache")), **kw)  # fmt: skip


def test_a_second_identical_run_runs_no_task_code_and_changes_miss(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    levels = {"l1_cache": {"type": "memory", "size": "64MB", "ttl": "1h"},
              "l3_cache": {"type": "disk", "size": "64MB", "ttl": "7d"}}  # fmt: skip
    with _cluster(tmp_path, metrics=True) as c, PipelineManager(coordinator=c.address, config={"cache": levels}) as pm:
        first = pm.execute_pipeline(_etl(counter), monitor=False)
        assert h.calls(counter) == ["extract", "transform", "load"]
        assert _hits(first) == {"extract": False, "transform": False, "load": False}

        second = pm.execute_pipeline(_etl(counter), monitor=False)
        assert h.calls(counter) == ["extract", "transform", "load"]  # no task code ran
        assert _hits(second) == {"extract": True, "transform": True, "load": True}
        assert second.outputs == first.outputs == {"extract": [0, 1, 2, 3, 4], "transform": [0, 2, 4, 6, 8], "load": 20}
        info = pm.client.get_run(second.run_id)
        assert info.summary.cache_hits == 3 and all(t.cache_hit for t in info.tasks)

        status = subprocess.run(
            [sys.executable, "-c", "import sys; from xpipe._cli import main; sys.exit(main())", "status",
             second.run_id, "--coordinator", c.address],
            capture_output=True, text=True, env=child_env(), timeout=60, check=True,
        ).stdout  # fmt: skip
        assert status.count("(cache hit)") == 3, status

        (worker,) = c.workers
        scraped = urllib.request.urlopen(c.metrics_url(worker), timeout=10).read().decode()
        assert "xpipe_task_cache_hits_total 3.0" in scraped and "xpipe_task_cache_misses_total 3.0" in scraped

        # A changed input misses from there on; a new cache_version misses that task only
        # (its output is the same, so the task after it hits again).
        changed = pm.execute_pipeline(_etl(counter, 6), monitor=False)
        assert _hits(changed) == {"extract": False, "transform": False, "load": False}
        bumped = pm.execute_pipeline(_etl(counter, 6, version="2"), monitor=False)
        assert _hits(bumped) == {"extract": True, "transform": False, "load": True}

        # Changed code misses: two versions of a (pickled) load function.
        def load_v1(rows, counter):
            h._count(counter, "load_v1")
            return sum(rows)

        def load_v2(rows, counter):
            h._count(counter, "load_v2")
            return sum(rows) + 1

        before = len(h.calls(counter))
        assert pm.execute_pipeline(_etl(counter, 6, load=load_v1), monitor=False).outputs["load"] == 30
        again = pm.execute_pipeline(_etl(counter, 6, load=load_v1), monitor=False)
        assert again.tasks["load"].cache_hit and again.outputs["load"] == 30
        assert pm.execute_pipeline(_etl(counter, 6, load=load_v2), monitor=False).outputs["load"] == 31
        assert h.calls(counter)[before:] == ["load_v1", "load_v2"]


def test_redis_level_invalidation_and_a_redis_that_is_down(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with RedisServer(tmp_path / "redis") as redis_server, _cluster(tmp_path, workers=2) as c:
        levels = {"l1_cache": {"type": "memory", "size": "64MB"},
                  "l2_cache": {"type": "redis", "size": "64MB", "ttl": "24h",
                               "url": f"redis://{redis_server.address}/0", "prefix": "test-cache"}}  # fmt: skip
        with PipelineManager(coordinator=c.address, config={"cache": levels}) as pm:
            pm.execute_pipeline(_etl(counter), monitor=False)
            again = pm.execute_pipeline(_etl(counter), monitor=False)
            assert all(_hits(again).values()) and len(h.calls(counter)) == 3  # across two workers, via L2

            report = pm.invalidate_cache("etl", "load")
            assert report["removed"] == {"l2_cache": 1} and report["generation_bumped"] == "etl/load"
            after = pm.execute_pipeline(_etl(counter), monitor=False)
            assert _hits(after) == {"extract": True, "transform": True, "load": False}
            assert h.calls(counter)[3:] == ["load"]

            assert pm.invalidate_cache("etl")["removed"] == {"l2_cache": 3}
            assert not any(_hits(pm.execute_pipeline(_etl(counter), monitor=False)).values())

            redis_server.stop()
            down = pm.execute_pipeline(_etl(counter, 7), monitor=False)  # new inputs: every task looks up
            assert down.succeeded and down.outputs["load"] == 42
            for task in down.tasks.values():
                assert any("result cache level 'l2_cache' unavailable, using the others" in w
                           for w in task.metric_warnings), task  # fmt: skip
            assert h.calls(counter)[-3:] == ["extract", "transform", "load"]


def test_warm_cache_strategies_unpicklable_results_and_ttl(tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with _cluster(tmp_path) as c, PipelineManager(coordinator=c.address, config={"cache": {"l1": {"type": "memory"}}}) as pm:
        # warm one task on given upstream values: the run then hits it
        warm = pm.warm_cache(_etl(counter, 3), task="transform", inputs=[[0, 1, 2]])
        assert warm.succeeded and h.calls(counter) == ["transform"]
        run = pm.execute_pipeline(_etl(counter, 3), monitor=False)
        assert _hits(run) == {"extract": False, "transform": True, "load": False}
        assert h.calls(counter) == ["transform", "extract", "load"]

        # a strategy gets the pipeline and its history, and warms with the one-argument form
        seen = []

        @pm.cache_strategy("predictive_warming")
        def predict(pipeline, historical_data):
            seen.append((pipeline.name, len(historical_data.of(pipeline.name).runs)))
            pm.warm_cache({"extract": list(range(4))})

        run = pm.execute_pipeline(_etl(counter, 4), monitor=False)
        assert seen == [("etl", 2)]  # the warm run of transform and the run after it
        assert _hits(run) == {"extract": False, "transform": True, "load": True}
        pm._cache.strategies.clear()

        # a big result (it travels through the artifact store) is stored by content
        p = Pipeline("big")
        p.add_task(Task("big", h.big, args=(counter, 400_000), cache=True))
        p.add_task(Task("size", len, depends_on=["big"]))
        assert pm.execute_pipeline(p, monitor=False).outputs["size"] == 400_000
        again = pm.execute_pipeline(p, monitor=False)
        assert again.tasks["big"].cache_hit and again.outputs["size"] == 400_000
        assert h.calls(counter).count("big") == 1

        # an unpicklable result is not cached, and the task says why
        p = Pipeline("bad")
        p.add_task(Task("lock", h.unpicklable, args=(counter,), cache=True))
        bad = pm.execute_pipeline(p, monitor=False, raise_on_failure=False)
        lock = bad.tasks["lock"]
        assert lock.error_type == "SERIALIZATION"
        assert any(w.startswith("result not cached: it could not be encoded") for w in lock.metric_warnings)

        # a short TTL: a hit at once, a miss once it has passed (polled, no fixed sleep)
        p = Pipeline("ttl")
        p.add_task(Task("once", h.extract, args=(counter, 1), cache=True, cache_ttl=1.5))
        assert not pm.execute_pipeline(p, monitor=False).tasks["once"].cache_hit
        assert pm.execute_pipeline(p, monitor=False).tasks["once"].cache_hit
        eventually(lambda: not pm.execute_pipeline(p, monitor=False).tasks["once"].cache_hit, timeout_s=15, interval_s=0.2)


def test_the_seeds_caching_sample_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    """The seed's "Advanced Caching Strategy" sample, its ``ml_model`` filled in: the dict as
    given (its redis level takes its URL from XPIPE_CACHE_REDIS_URL), a predictive warming
    strategy that warms with the one-argument ``pm.warm_cache(input_data)``, then a run whose
    transform is served from the warmed cache."""
    counter = str(tmp_path / "calls")
    with RedisServer(tmp_path / "redis") as redis_server, _cluster(tmp_path) as c:
        monkeypatch.setenv("XPIPE_CACHE_REDIS_URL", f"redis://{redis_server.address}/0")
        pm = PipelineManager(coordinator=c.address)
        try:
            # --- the seed, as written ---
            cache_config = {
                "l1_cache": {"type": "memory", "size": "2GB", "ttl": "1h"},
                "l2_cache": {"type": "redis", "size": "10GB", "ttl": "24h"},
                "l3_cache": {"type": "disk", "size": "100GB", "ttl": "7d"}
            }  # fmt: skip

            class ml_model:  # the user's model: predicts tomorrow's extract from the past runs
                @staticmethod
                def predict_pipeline_inputs(pipeline, historical_data):
                    assert historical_data.of(pipeline.name) is not None
                    return [{"extract": list(range(7))}]

            @pm.cache_strategy("predictive_warming")
            def cache_warming_strategy(pipeline, historical_data):
                # Predict what data will be needed
                predicted_inputs = ml_model.predict_pipeline_inputs(
                    pipeline, historical_data
                )

                # Pre-populate cache
                for input_data in predicted_inputs:
                    pm.warm_cache(input_data)
            # --- end of the seed ---
            pm.configure_cache(cache_config)  # the seed defines the dict; this hands it to the manager
            run = pm.execute_pipeline(_etl(counter, 7), monitor=False)
            # The strategy warmed transform and load on extract's predicted value, before the run.
            assert _hits(run) == {"extract": False, "transform": True, "load": True}
            assert run.outputs["load"] == sum(2 * i for i in range(7))
            assert h.calls(counter).count("extract") == 1  # the real one; warming stood in for it
        finally:
            pm.close()
