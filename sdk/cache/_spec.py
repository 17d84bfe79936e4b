"""Fill the ``CacheSpec`` of each cached task of a pipeline's spec (what workers act on)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._proto import common_pb2
from ._config import DEFAULT_CONFIG, CacheConfig, CacheSettings, parse_cache_config
from ._key import code_id

if TYPE_CHECKING:
    from .._dag import Pipeline

__all__ = ["apply_cache", "settings_of"]

_DEFAULT: CacheConfig | None = None


def _default_config() -> CacheConfig:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = parse_cache_config(DEFAULT_CONFIG, env={})
    return _DEFAULT


def settings_of(pipeline: Pipeline, task: Any) -> CacheSettings | None:
    """The task's own settings, else the pipeline's default (``enable_cache``), else None."""
    own = getattr(task, "cache", None)
    if own is False:  # cache=False: a side-effecting task opts out of the pipeline's default
        return None
    if own is not None:
        return own
    return getattr(pipeline, "cache_default", None)


def apply_cache(
    pipeline: Pipeline, spec: common_pb2.PipelineSpec, config: CacheConfig | None = None,
    generations: dict[str, int] | None = None,
) -> None:  # fmt: skip
    """Give every cached task of ``spec`` its CacheSpec: code identity, TTL, levels, generation.

    Args:
        config: the manager's levels; None: :data:`~xpipe.cache._config.DEFAULT_CONFIG`.
        generations: task name -> invalidation generation (see ``_manage``); absent: 0.
    """
    levels: list[common_pb2.CacheLevel] | None = None
    tasks = pipeline.tasks
    for task_spec in spec.tasks:
        task = tasks.get(task_spec.name)
        settings = settings_of(pipeline, task) if task is not None else None
        if settings is None:
            if task_spec.HasField("cache"):
                task_spec.ClearField("cache")
            continue
        if levels is None:
            levels = (config or _default_config()).to_proto()
        cache = task_spec.cache
        cache.Clear()
        func = getattr(task, "func", None) if task_spec.WhichOneof("kind") == "python" else None
        cache.code_id = code_id(task_spec, func, settings.version, spec.name, spec.namespace)
        cache.ttl_s = settings.ttl_s or 0.0
        cache.levels.extend(levels)
        cache.pipeline = spec.name
        cache.generation = (generations or {}).get(task_spec.name, 0)
