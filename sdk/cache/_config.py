"""The result cache's configuration: the seed's level dict and a task's own settings, checked.

A config is a mapping of level names to level dicts, tried in the order given::

    {"l1_cache": {"type": "memory", "size": "2GB", "ttl": "1h"},
     "l2_cache": {"type": "redis", "size": "10GB", "ttl": "24h", "url": "redis://127.0.0.1:6379/0"},
     "l3_cache": {"type": "disk", "size": "100GB", "ttl": "7d"}}

Every problem is a ``ValueError`` naming the level and key. Parsing happens in the SDK
before anything is submitted; workers get the checked levels as ``CacheLevel`` messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .._limits import parse_quantity
from .._proto import common_pb2
from .._retry import parse_duration_s

__all__ = [
    "LEVEL_TYPES", "LEVEL_KEYS", "REDIS_URL_ENV", "DEFAULT_CONFIG", "CacheLevelConfig", "CacheConfig",
    "CacheSettings", "parse_cache_config", "parse_size_bytes", "parse_ttl_s",
]  # fmt: skip

#: The kinds of level (the registry in ``_levels`` has one class per kind).
LEVEL_TYPES = ("memory", "redis", "disk")
#: Keys a level dict may hold; anything else is refused.
LEVEL_KEYS = frozenset({"type", "size", "ttl", "url", "path", "prefix"})
#: Where a redis level without "url" takes its URL from.
REDIS_URL_ENV = "XPIPE_CACHE_REDIS_URL"
#: The levels of a manager that configured none: an L1 in each worker, bounded.
DEFAULT_CONFIG: dict[str, dict[str, Any]] = {"l1_cache": {"type": "memory", "size": "256MiB"}}
#: The Redis key prefix when the level names none (one cluster per Redis db by default).
DEFAULT_REDIS_PREFIX = "xpipe:cache"


def parse_size_bytes(value: Any, where: str) -> int:
    """``"2GB"`` -> 2_000_000_000 (``"2GiB"`` binary); a number is bytes. Raises ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: size must be bytes or a string like '2GB', got {value!r:.80}")
    try:
        size = parse_quantity(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise ValueError(f"{where}: size {value!r:.80} is {exc}") from None
    if not size >= 1 or size == float("inf"):
        raise ValueError(f"{where}: size must be at least 1 byte, got {value!r:.80}")
    return int(size)


def parse_ttl_s(value: Any, where: str) -> float:
    """``"7d"`` -> 604800.0; a number is seconds; must be > 0. Raises ValueError naming ``where``."""
    try:
        ttl_s = parse_duration_s(value)
    except ValueError as exc:
        raise ValueError(f"{where}: ttl {value!r:.80}: {exc}") from None
    if ttl_s <= 0:
        raise ValueError(f"{where}: ttl must be > 0, got {value!r:.80}")
    return ttl_s


@dataclass(frozen=True, slots=True)
class CacheLevelConfig:
    """One checked level."""

    #: The config's key for it ("l1_cache").
    name: str
    #: "memory", "redis" or "disk".
    type: str
    #: Most bytes of entries it keeps; 0: no bound.
    size_bytes: int = 0
    #: An entry older than this is a miss; 0: no expiry.
    ttl_s: float = 0.0
    #: redis: ``redis://HOST:PORT/DB``.
    url: str = ""
    #: disk: a directory shared by the workers; "": one per worker under its state dir.
    path: str = ""
    #: redis: the prefix of every key this level writes.
    prefix: str = ""

    def to_proto(self) -> common_pb2.CacheLevel:
        return common_pb2.CacheLevel(
            name=self.name, type=self.type, size_bytes=self.size_bytes, ttl_s=self.ttl_s, url=self.url,
            path=self.path, prefix=self.prefix,
        )  # fmt: skip

    @classmethod
    def from_proto(cls, level: common_pb2.CacheLevel) -> CacheLevelConfig:
        return cls(level.name, level.type, level.size_bytes, level.ttl_s, level.url, level.path, level.prefix)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The levels, in lookup order."""

    levels: tuple[CacheLevelConfig, ...]

    def to_proto(self) -> list[common_pb2.CacheLevel]:
        return [level.to_proto() for level in self.levels]

    def of_type(self, kind: str) -> tuple[CacheLevelConfig, ...]:
        return tuple(level for level in self.levels if level.type == kind)


def _level(name: Any, spec: Any, env: Mapping[str, str]) -> CacheLevelConfig:
    if not isinstance(name, str) or not name:
        raise ValueError(f"cache config: level names must be non-empty strings, got {name!r:.80}")
    where = f"cache config {name!r}"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: must be a dict like {{'type': 'memory', 'size': '2GB'}}, got {spec!r:.80}")
    unknown = sorted(set(spec) - LEVEL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(LEVEL_KEYS)}")
    kind = spec.get("type")
    if kind not in LEVEL_TYPES:
        raise ValueError(f"{where}: type must be one of {list(LEVEL_TYPES)}, got {kind!r:.80}")
    size_bytes = parse_size_bytes(spec["size"], where) if spec.get("size") is not None else 0
    ttl_s = parse_ttl_s(spec["ttl"], where) if spec.get("ttl") is not None else 0.0
    url = spec.get("url") or ""
    path = spec.get("path") or ""
    prefix = spec.get("prefix") or ""
    for key, value in (("url", url), ("path", path), ("prefix", prefix)):
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string, got {value!r:.80}")
    if kind != "redis" and (url or prefix):
        raise ValueError(f"{where}: 'url' and 'prefix' are for type 'redis', not {kind!r}")
    if kind != "disk" and path:
        raise ValueError(f"{where}: 'path' is for type 'disk', not {kind!r}")
    if kind == "redis":
        url = url or env.get(REDIS_URL_ENV, "")
        if not url:
            raise ValueError(
                f"{where}: a redis level needs 'url': 'redis://HOST:PORT/DB' in its dict or in ${REDIS_URL_ENV}"
            )
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError(f"{where}: url must look like redis://HOST:PORT/DB, got {url!r:.120}")
        prefix = prefix or DEFAULT_REDIS_PREFIX
    if kind == "disk" and path:
        path = os.path.abspath(os.path.expanduser(path))
    return CacheLevelConfig(name, kind, size_bytes, ttl_s, url, path, prefix)


def parse_cache_config(config: Any, env: Mapping[str, str] | None = None) -> CacheConfig:
    """Check the seed's level dict (see the module docs) and return it frozen.

    Raises:
        ValueError: not a dict, no level, an unknown key, a bad type, size or TTL, a redis
            level without a URL; the message names the level and the key.
    """
    if isinstance(config, CacheConfig):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(f"cache config must be a dict of levels, got {type(config).__name__}")
    if not config:
        raise ValueError("cache config has no level; give at least one, e.g. {'l1_cache': {'type': 'memory'}}")
    environ = os.environ if env is None else env
    return CacheConfig(tuple(_level(name, spec, environ) for name, spec in config.items()))


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """A task's (or a pipeline's default) cache settings: ``cache=True, cache_ttl=..., cache_version=...``."""

    #: The task's own TTL; None: each level's.
    ttl_s: float | None = None
    #: Bumped by the user to make old entries of unchanged code misses.
    version: str = ""

    @classmethod
    def make(cls, where: str, cache: Any, ttl: Any = None, version: Any = None) -> CacheSettings | None:
        """The settings of ``cache=...`` (None when off). Raises ValueError naming ``where``."""
        if cache is None or cache is False:
            if ttl is not None or version is not None:
                raise ValueError(f"{where}: cache_ttl and cache_version need cache=True")
            return None
        if cache is not True:
            raise ValueError(f"{where}: cache must be True or False, got {cache!r:.80}")
        if ttl is not None:
            ttl_s: float | None = parse_ttl_s(ttl, f"{where} cache_ttl")
        else:
            ttl_s = None
        if version is not None and not isinstance(version, (str, int)):
            raise ValueError(f"{where}: cache_version must be a string or int, got {version!r:.80}")
        return cls(ttl_s, "" if version is None else str(version))
