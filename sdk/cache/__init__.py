"""The multi-level result cache (docs/cache.md).

``Task(..., cache=True, cache_ttl="1h", cache_version="2")`` (or ``@task(cache=True)``, or
``pipeline.enable_cache()``) marks a task whose result may be reused; the levels come from
``PipelineManager(config={"cache": {...}})`` or ``pm.configure_cache({...})``. The worker
that gets a cached task looks its key up in the levels in order and, on a hit, reports the
stored result without running the code; on a miss it runs the task and stores the result in
every level.
"""

from ._config import (
    DEFAULT_CONFIG,
    LEVEL_TYPES,
    REDIS_URL_ENV,
    CacheConfig,
    CacheLevelConfig,
    CacheSettings,
    parse_cache_config,
)
from ._key import code_id, entry_key, payload_digest
from ._levels import LEVELS, CacheLevel, CacheLevelDown, DiskLevel, MemoryLevel, RedisLevel
from ._multi import MultiLevelCache

__all__ = [
    "DEFAULT_CONFIG", "LEVEL_TYPES", "REDIS_URL_ENV", "CacheConfig", "CacheLevelConfig", "CacheSettings",
    "parse_cache_config", "code_id", "entry_key", "payload_digest", "LEVELS", "CacheLevel", "CacheLevelDown",
    "DiskLevel", "MemoryLevel", "RedisLevel", "MultiLevelCache",
]  # fmt: skip
