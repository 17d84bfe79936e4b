"""The levels of a cached task, tried in order: a lookup back-fills the faster levels.

The worker's daemon holds one :class:`MultiLevelCache`; it opens each configured level
once (levels are keyed by their checked config, so runs that name the same level share
it) and counts hits per level and misses. A level that is down is skipped with one
warning per outage (logged, and returned so the task's telemetry carries it); a cache
problem never fails a task.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .._proto import common_pb2
from ._config import CacheLevelConfig
from ._levels import CacheLevel, CacheLevelDown, namespace, open_level

__all__ = ["MultiLevelCache", "Lookup", "effective_ttl_s"]

log = logging.getLogger(__name__)


def effective_ttl_s(level: CacheLevelConfig, task_ttl_s: float) -> float:
    """The shorter of the level's TTL and the task's (0 means none)."""
    ttls = [t for t in (level.ttl_s, task_ttl_s) if t > 0]
    return min(ttls) if ttls else 0.0


@dataclass(slots=True)
class Lookup:
    """What a lookup found: the payload bytes (None: a miss), which level, and warnings."""

    payload: bytes | None = None
    level: str = ""
    warnings: list[str] = field(default_factory=list)


class MultiLevelCache:
    """Every level this worker was asked to use, opened on first use."""

    def __init__(self, base_dir: str = ""):
        self.base_dir = base_dir
        self._levels: dict[CacheLevelConfig, CacheLevel] = {}
        self._lock = threading.Lock()
        self._down: set[str] = set()  # levels whose outage was already warned about
        #: Hits per level name, and misses (a lookup no level answered), since start.
        self.hits: dict[str, int] = {}
        self.misses = 0
        self.stores = 0

    def _level(self, config: CacheLevelConfig) -> CacheLevel:
        with self._lock:
            level = self._levels.get(config)
            if level is None:
                level = self._levels[config] = open_level(config, self.base_dir)
            return level

    def _levels_of(self, spec: common_pb2.CacheSpec) -> list[CacheLevel]:
        return [self._level(CacheLevelConfig.from_proto(c)) for c in spec.levels]

    def _failed(self, level: CacheLevel, exc: CacheLevelDown, warnings: list[str]) -> None:
        text = f"result cache level {level.name!r} unavailable, using the others: {exc}"
        warnings.append(text)
        if level.name not in self._down:
            self._down.add(level.name)
            log.warning("%s", text)

    def _ok(self, level: CacheLevel) -> None:
        if level.name in self._down:
            self._down.discard(level.name)
            log.info("result cache level %r is back", level.name)

    def lookup(self, spec: common_pb2.CacheSpec, task: str, key: str) -> Lookup:
        """Try each level in order; on a hit, copy the entry into the levels tried before."""
        ns = namespace(spec.pipeline, task)
        found = Lookup()
        tried: list[CacheLevel] = []
        for level in self._levels_of(spec):
            ttl_s = effective_ttl_s(level.config, spec.ttl_s)
            try:
                payload = level.get(ns, key, ttl_s)
            except CacheLevelDown as exc:
                self._failed(level, exc, found.warnings)
                continue
            self._ok(level)
            if payload is None:
                tried.append(level)
                continue
            found.payload, found.level = payload, level.name
            for faster in tried:
                try:
                    faster.put(ns, key, payload, effective_ttl_s(faster.config, spec.ttl_s))
                except CacheLevelDown as exc:
                    self._failed(faster, exc, found.warnings)
            with self._lock:
                self.hits[level.name] = self.hits.get(level.name, 0) + 1
            return found
        with self._lock:
            self.misses += 1
        return found

    def store(self, spec: common_pb2.CacheSpec, task: str, key: str, payload: bytes) -> list[str]:
        """Put ``payload`` in every level; returns warnings for the levels that failed."""
        ns = namespace(spec.pipeline, task)
        warnings: list[str] = []
        for level in self._levels_of(spec):
            try:
                level.put(ns, key, payload, effective_ttl_s(level.config, spec.ttl_s))
            except CacheLevelDown as exc:
                self._failed(level, exc, warnings)
            else:
                self._ok(level)
        with self._lock:
            self.stores += 1
        return warnings

    def close(self) -> None:
        for level in self._levels.values():
            try:
                level.close()
            except Exception:  # noqa: BLE001 - closing one must not keep the others open
                log.exception("closing cache level %r", level.name)


