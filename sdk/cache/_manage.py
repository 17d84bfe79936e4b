"""The manager's side of the result cache: levels, warming, strategies, invalidation.

:class:`CacheManager` belongs to one :class:`~xpipe.PipelineManager`. Before every run it
gives the cached tasks their ``CacheSpec`` (levels, generation) and first calls the
registered warming strategies (``@pm.cache_strategy``) with the pipeline's history.

Invalidation, per level kind:

- shared levels (``redis``, ``disk`` with a ``path``) have their entries deleted at once;
- per-worker levels (``memory``, ``disk`` without ``path``) cannot be reached from here:
  instead the task's *generation* is bumped. The generation is part of every key, so the
  old entries are never read again and age out by LRU and TTL. Generations live in the
  first redis level (a hash, so every manager and client sees them) and in this manager.
"""

from __future__ import annotations

import contextvars
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._proto import common_pb2
from ._config import DEFAULT_CONFIG, CacheConfig, parse_cache_config
from ._levels import CacheLevelDown, DiskLevel, RedisLevel, namespace
from ._spec import apply_cache, settings_of

if TYPE_CHECKING:
    from .._dag import Pipeline
    from .._manager import PipelineManager

__all__ = ["CacheManager", "constant"]

log = logging.getLogger(__name__)

#: The pipeline a warming strategy runs for (one-argument ``pm.warm_cache(inputs)`` uses it).
_WARMING: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar("xpipe_cache_warming", default=None)
_ALL = "*"


def constant(value: Any) -> Any:
    """A warm run's stand-in for an upstream task: returns the input it was given."""
    return value


def _generation_fields(pipeline: str, task: str) -> list[str]:
    return [f"{pipeline}\0{task}", f"{pipeline}\0{_ALL}", _ALL]


class CacheManager:
    """The cache config and strategies of one PipelineManager (see the module docs)."""

    def __init__(self, manager: PipelineManager, config: Any = None):
        self._pm = manager
        self.config: CacheConfig = parse_cache_config(DEFAULT_CONFIG if config is None else config)
        self.configured = config is not None
        #: name -> (function, pipeline names it runs for; None: every pipeline with a cached task).
        self.strategies: dict[str, tuple[Callable[[Any, Any], None], frozenset[str] | None]] = {}
        self._local_generations: dict[str, int] = {}
        self._redis: RedisLevel | None = None

    def configure(self, config: Any) -> CacheConfig:
        """Use these levels from the next run on (checked first: a bad config changes nothing)."""
        checked = parse_cache_config(config)
        self.close()
        self.config, self.configured = checked, True
        return checked

    def _generation_level(self) -> RedisLevel | None:
        redis_levels = self.config.of_type("redis")
        if not redis_levels:
            return None
        if self._redis is None:
            self._redis = RedisLevel(redis_levels[0])
        return self._redis

    def generations(self, pipeline: str, tasks: Sequence[str]) -> dict[str, int]:
        """Task -> its generation: the sum of its task's, its pipeline's and the global count."""
        fields = [f for t in tasks for f in _generation_fields(pipeline, t)]
        values = [self._local_generations.get(f, 0) for f in fields]
        level = self._generation_level()
        if level is not None and fields:
            try:
                shared = level.generations(fields)
                values = [max(a, b) for a, b in zip(values, shared)]
            except CacheLevelDown as exc:
                log.warning("cache generations not read (%s); using this manager's", exc)
        return {t: sum(values[3 * i : 3 * i + 3]) for i, t in enumerate(tasks)}

    # ------------------------------------------------------------------ before each run

    def prepare(self, pipeline: Pipeline, spec: common_pb2.PipelineSpec) -> None:
        """Run the warming strategies, then give the cached tasks of ``spec`` their CacheSpec."""
        cached = [t.name for t in spec.tasks if t.HasField("cache")]
        if not cached:
            return
        if _WARMING.get() is None:
            self._run_strategies(pipeline)
        apply_cache(pipeline, spec, self.config, self.generations(spec.name, cached))

    def _run_strategies(self, pipeline: Pipeline) -> None:
        chosen = [(n, f) for n, (f, only) in self.strategies.items() if only is None or pipeline.name in only]
        if not chosen:
            return
        from ..insights._history import load_history

        history = load_history(self._pm.client, pipeline.name)
        token = _WARMING.set(pipeline)
        try:
            for name, func in chosen:
                try:
                    func(pipeline, history)
                except Exception:  # noqa: BLE001 - warming is an optimisation: the run goes on
                    log.exception("cache strategy %r failed for pipeline %r; the run goes on", name, pipeline.name)
                    warnings.warn(f"cache strategy {name!r} failed for pipeline {pipeline.name!r} (see the log)",
                                  stacklevel=4)  # fmt: skip
        finally:
            _WARMING.reset(token)

    def strategy(self, name: str, pipelines: Sequence[str] | None = None) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn(pipeline, historical_data)`` under ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"cache_strategy needs a non-empty name, got {name!r:.80}")
        only = None if pipelines is None else frozenset(pipelines)

        def register(fn: Callable) -> Callable:
            if not callable(fn):
                raise TypeError(f"cache_strategy({name!r}) must decorate a function, got {fn!r:.80}")
            self.strategies[name] = (fn, only)
            return fn

        return register

    # ------------------------------------------------------------------ warming

    def warm(self, pipeline: Any = None, task: str | None = None, inputs: Any = None) -> Any:
        """Run ``task`` (or the whole pipeline) once with ``inputs`` so its result is cached.

        ``inputs``: for one task, its upstream values, as a list in ``depends_on`` order or a
        dict by upstream task name (data-flow sources too); for a whole pipeline, a dict of
        task name -> value that those tasks are taken to return. Called with one argument
        inside a warming strategy, that argument is ``inputs`` for the strategy's pipeline.
        """
        from .._dag import Pipeline

        if not isinstance(pipeline, (Pipeline, str)):
            current = _WARMING.get()
            if current is None:
                raise TypeError(
                    "warm_cache(pipeline, task=..., inputs=...) needs a pipeline (or its registered name); "
                    "the one-argument form warm_cache(inputs) works only inside a @pm.cache_strategy function, "
                    f"got {type(pipeline).__name__}"
                )
            pipeline, inputs = current, pipeline if inputs is None else inputs
        resolved = self._pm._resolve(pipeline)
        warm = self._warm_pipeline(resolved, task, inputs)
        token = _WARMING.set(resolved)
        try:
            return self._pm.execute_pipeline(warm, monitor=False)
        finally:
            _WARMING.reset(token)

    def _warm_pipeline(self, pipeline: Pipeline, task: str | None, inputs: Any) -> Pipeline:
        from .._dag import Pipeline, Task

        tasks = pipeline.tasks
        warm = Pipeline(pipeline.name, namespace=pipeline.namespace)
        warm.cache_default = pipeline.cache_default
        if task is None:
            if inputs is not None and not isinstance(inputs, Mapping):
                raise TypeError(f"warm_cache: for a whole pipeline, inputs must be a dict of task name -> the value "
                                f"it is taken to return, got {type(inputs).__name__}; pass task=... for one task's "
                                "upstream values")  # fmt: skip
            given = dict(inputs or {})
            unknown = sorted(set(given) - set(tasks))
            if unknown:
                raise ValueError(f"warm_cache: pipeline {pipeline.name!r} has no tasks {unknown}")
            for t in tasks.values():
                warm.add_task(Task(t.name, constant, args=(given[t.name],)) if t.name in given else t)
            return warm
        target = tasks.get(task)
        if target is None:
            raise ValueError(f"warm_cache: pipeline {pipeline.name!r} has no task {task!r}; known: {sorted(tasks)}")
        if settings_of(pipeline, target) is None:
            raise ValueError(f"warm_cache: task {task!r} of pipeline {pipeline.name!r} is not cached (set cache=True)")
        upstream = target.upstream
        if inputs is None:
            inputs = {}
        if isinstance(inputs, Mapping):
            values = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(target.depends_on):
                raise ValueError(f"warm_cache: task {task!r} takes {len(target.depends_on)} upstream inputs "
                                 f"({target.depends_on}), got {len(inputs)}")  # fmt: skip
            values = dict(zip(target.depends_on, inputs))
        else:
            raise TypeError(f"warm_cache: inputs must be a list (depends_on order) or a dict by task name, "
                            f"got {type(inputs).__name__}")  # fmt: skip
        missing = [name for name in upstream if name not in values]
        extra = sorted(set(values) - set(upstream))
        if missing or extra:
            raise ValueError(f"warm_cache: task {task!r} needs inputs for {upstream}; "
                             f"missing {missing}, unknown {extra}")  # fmt: skip
        for name in upstream:
            warm.add_task(Task(name, constant, args=(values[name],)))
        warm.add_task(target)
        return warm

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, pipeline: Any = None, task: str | None = None) -> dict[str, Any]:
        """Remove entries of ``task`` of ``pipeline`` (or the pipeline's, or all); see the module docs.

        Returns:
            ``{"removed": {level: entries deleted}, "generation_bumped": field, "unreachable": [...]}``.
        """
        from .._dag import Pipeline

        if pipeline is None and task is not None:
            raise ValueError("invalidate_cache(task=...) needs the pipeline too")
        name = pipeline.name if isinstance(pipeline, Pipeline) else pipeline
        if name is not None and not isinstance(name, str):
            raise TypeError(f"invalidate_cache: pipeline must be a Pipeline or a name, got {type(pipeline).__name__}")
        field = _ALL if name is None else f"{name}\0{task or _ALL}"
        ns = "" if name is None else namespace(name, task or "")
        report: dict[str, Any] = {"removed": {}, "generation_bumped": field.replace("\0", "/"), "unreachable": []}
        self._local_generations[field] = self._local_generations.get(field, 0) + 1
        level = self._generation_level()
        if level is not None:
            try:
                shared = level.bump_generation(field)
                self._local_generations[field] = max(self._local_generations[field], shared)
            except CacheLevelDown as exc:
                report["unreachable"].append(str(exc))
        for config in self.config.levels:
            if config.type == "redis":
                target = self._redis if self._redis is not None and self._redis.config == config else RedisLevel(config)
            elif config.type == "disk" and config.path:
                target = DiskLevel(config)
            else:
                continue  # per worker: the generation bump above retires its entries
            try:
                report["removed"][config.name] = target.invalidate(ns)
            except CacheLevelDown as exc:
                report["unreachable"].append(str(exc))
            finally:
                if target is not self._redis:
                    target.close()
        return report

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
