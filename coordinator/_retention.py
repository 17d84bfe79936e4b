"""Retention: delete finished runs past their namespace's limit, with their logs and artifacts.

``--retention-days N`` sets the limit of every namespace, ``--retention NS=DAYS`` (repeatable)
that of one namespace (runs carry ``PipelineSpec.namespace``; empty means ``default``). Days
may be fractions. A namespace with no limit keeps its runs forever; so does every namespace
when neither flag is given.

The sweeper runs at start and then every ``interval_s`` (an hour), on the leader only (a
coordinator elected later sweeps within ``LEADER_CHECK_S``), never on the hot path;
``GovernanceService.CollectGarbage`` (``xpipe gc``) runs one sweep at once, or lists what
one would delete. A sweep deletes, for each finished run whose ``finished_at``
is older than its limit:

- its run and task records, results and story entries (store transactions: a reader sees the
  whole run or none of it);
- its task log rows (``task-logs.db``);
- its artifact directory (``ARTIFACT_DIR/RUN_ID``: results, and superseded attempts' files).

It also deletes artifact directories no stored run refers to that are older than the longest
limit (left by runs deleted while files were being written, or by a store that was reset),
and task log rows of runs the store no longer has (with etcd, followers sweep those only:
each coordinator keeps the logs its workers sent it while it led).
Unfinished runs are never deleted: the store checks the run's state in the deleting
transaction.

:func:`select_expired` is the pure part (which runs go); :class:`Retention` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from xpipe._proto import governance_pb2

from ._events import RunRecord

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = [
    "DEFAULT_NAMESPACE",
    "SECONDS_PER_DAY",
    "SWEEP_INTERVAL_S",
    "Retention",
    "RetentionPolicy",
    "select_expired",
]

log = logging.getLogger(__name__)

#: A run whose spec names no namespace belongs to this one.
DEFAULT_NAMESPACE = "default"
SECONDS_PER_DAY = 86_400.0
#: How often the sweeper runs after the first sweep at start.
SWEEP_INTERVAL_S = 3_600.0
#: How often a sweeper that is due looks again whether its coordinator leads (HA).
LEADER_CHECK_S = 30.0


def _days(value: str | float, what: str) -> float:
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of days, got {value!r}") from None
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"{what} must be a positive number of days, got {value!r}")
    return days


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished runs are kept.

    Attributes:
        default_days: the limit of every namespace not in ``namespace_days`` (None: forever).
        namespace_days: limits of single namespaces, in days.
    """

    default_days: float | None = None
    namespace_days: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, retention_days: float | str | None, retention: Iterable[str] = ()) -> RetentionPolicy:
        """From ``--retention-days N`` and ``--retention NS=DAYS`` values; errors name the flag and value."""
        default = None if retention_days is None else _days(retention_days, "--retention-days")
        per_ns: dict[str, float] = {}
        for item in retention:
            ns, sep, days = item.partition("=")
            ns = ns.strip()
            if not sep or not ns:
                raise ValueError(
                    f"--retention {item!r}: expected NAMESPACE=DAYS, e.g. --retention analytics=30"
                )
            if ns in per_ns:
                raise ValueError(f"--retention {item!r}: namespace {ns!r} is given twice")
            per_ns[ns] = _days(days, f"--retention {ns}=")
        return cls(default, per_ns)

    @property
    def enabled(self) -> bool:
        return self.default_days is not None or bool(self.namespace_days)

    def days_for(self, namespace: str) -> float | None:
        """The limit of ``namespace`` ("" is ``default``) in days; None keeps its runs forever."""
        return self.namespace_days.get(namespace or DEFAULT_NAMESPACE, self.default_days)

    def shortest_days(self) -> float | None:
        limits = [d for d in (self.default_days, *self.namespace_days.values()) if d is not None]
        return min(limits) if limits else None

    def longest_days(self) -> float | None:
        """The longest limit (an orphaned file's namespace is unknown: it is kept this long)."""
        if self.default_days is None and self.namespace_days:
            return None  # namespaces without a limit keep everything: so is an orphan, maybe theirs
        limits = [d for d in (self.default_days, *self.namespace_days.values()) if d is not None]
        return max(limits) if limits else None

    def as_map(self) -> dict[str, float]:
        out = dict(self.namespace_days)
        if self.default_days is not None:
            out[""] = self.default_days
        return out


def select_expired(
    runs: Iterable[tuple[RunRecord, str]], policy: RetentionPolicy, now: float
) -> list[tuple[RunRecord, str]]:
    """The finished runs of ``runs`` (record, namespace) older than their namespace's limit.

    Pure: ``now`` is unix seconds. Runs whose state is not finished are never selected,
    whatever their times say.
    """
    from ._store import _FINISHED  # the one list of finished run states the stores use

    out = []
    for rec, namespace in runs:
        days = policy.days_for(namespace)
        if days is None or rec.state not in _FINISHED or rec.finished_at <= 0:
            continue
        if rec.finished_at < now - days * SECONDS_PER_DAY:
            out.append((rec, namespace or DEFAULT_NAMESPACE))
    return out


def _tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path`` (a file or a directory), not following links."""
    if path.is_symlink() or path.is_file():
        return 1, path.lstat().st_size
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:
                continue
    return files, size


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, names in os.walk(path):
            for name in (*dirs, *names):
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=False)
    else:
        path.unlink(missing_ok=True)


def _is_store_value_dir(name: str) -> bool:
    """The etcd store keeps big values in ``ARTIFACT_DIR/<2 hex>/``: its own, not runs'."""
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


class Retention:
    """The sweeper and ``CollectGarbage`` of one coordinator (see the module docs).

    Args:
        coordinator: whose store, task logs, engine and artifact directory it works on.
        policy: the limits.
        interval_s: time between sweeps after the one at start.
    """

    def __init__(
        self, coordinator: Coordinator, policy: RetentionPolicy, *, interval_s: float = SWEEP_INTERVAL_S
    ):
        self.c = coordinator
        self.policy = policy
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        #: Runs deleted by this coordinator's sweeps and gc calls.
        self.runs_deleted = 0

    @property
    def artifact_dir(self) -> Path | None:
        path = self.c.config.artifact_dir
        return Path(path) if path else None

    def start(self) -> None:
        if self.policy.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="xpipe-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        last_sweep = last_follower_sweep = -math.inf
        while True:
            election = self.c.election
            now = time.monotonic()
            # A coordinator that becomes leader later sweeps within LEADER_CHECK_S of it.
            if election is not None and not election.is_leader:
                if now - last_follower_sweep < self.interval_s:
                    await asyncio.sleep(min(self.interval_s, LEADER_CHECK_S))
                    continue
                last_follower_sweep = now
                try:
                    gone = await self.sweep_orphaned_logs()
                    if gone:
                        log.info("retention: deleted %d task log rows of runs deleted by the leader", gone)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("retention: the follower's log sweep failed; retrying in %.0f s", self.interval_s)
            elif now - last_sweep >= self.interval_s:
                last_sweep = now
                try:
                    done = await self.collect(dry_run=False)
                    if done.runs or done.orphaned_artifacts:
                        log.info("retention: deleted %d runs and %d orphaned artifact dirs (%d files, %d bytes)",
                                 len(done.runs), len(done.orphaned_artifacts), done.files, done.bytes)  # fmt: skip
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A failed sweep is retried at the next interval; say why now.
                    log.exception("retention sweep failed; retrying in %.0f s", self.interval_s)
            await asyncio.sleep(min(self.interval_s, LEADER_CHECK_S))

    async def collect(
        self, *, dry_run: bool, now: float | None = None
    ) -> governance_pb2.CollectGarbageResponse:
        """One sweep (or, with ``dry_run``, the list of what it would delete)."""
        async with self._lock:  # a sweep and a gc call never interleave
            return await self._collect(dry_run, time.time() if now is None else now)

    async def _collect(self, dry_run: bool, now: float) -> governance_pb2.CollectGarbageResponse:
        out = governance_pb2.CollectGarbageResponse(dry_run=dry_run, retention_days=self.policy.as_map())
        shortest = self.policy.shortest_days()
        if shortest is None:
            return out
        store = self.c.store
        candidates = await store.finished_runs_before(now - shortest * SECONDS_PER_DAY)
        expired = select_expired(candidates, self.policy, now)
        run_ids = [rec.run_id for rec, _ in expired]
        usage = await self.c.task_logs.usage(run_ids) if run_ids else {}
        artifact_dir = self.artifact_dir
        for rec, namespace in expired:
            files = size = 0
            if artifact_dir is not None and (artifact_dir / rec.run_id).exists():
                files, size = await asyncio.to_thread(_tree_size, artifact_dir / rec.run_id)
            rows, log_bytes = usage.get(rec.run_id, (0, 0))
            out.runs.append(governance_pb2.ExpiredRun(
                run_id=rec.run_id, pipeline=rec.name, namespace=namespace, finished_at=rec.finished_at,
                log_rows=rows, log_bytes=log_bytes, artifact_files=files, artifact_bytes=size,
            ))  # fmt: skip
            out.files += files
            out.bytes += size + log_bytes
        orphans = await self._orphans(now, set(run_ids))
        orphaned_logs = await self._orphaned_logs(set(run_ids))
        if orphaned_logs:
            out.orphaned_log_rows = sum(rows for rows, _ in (await self.c.task_logs.usage(orphaned_logs)).values())
        for path, files, size in orphans:
            out.orphaned_artifacts.append(str(path))
            out.orphaned_files += files
            out.orphaned_bytes += size
            out.files += files
            out.bytes += size
        if dry_run:
            return out
        # Out of memory first, so a read during the sweep goes to the store and sees the run
        # whole or not at all; then the store (the decision), then the files it named.
        self.c.engine.drop_finished(run_ids)
        deleted = await store.delete_runs(run_ids) if run_ids else 0
        if run_ids or orphaned_logs:
            await self.c.task_logs.delete_runs(run_ids + orphaned_logs)
        if artifact_dir is not None:
            paths = [artifact_dir / r for r in run_ids] + [path for path, _, _ in orphans]
            await asyncio.to_thread(self._remove_all, paths)
        self.runs_deleted += deleted
        return out

    async def _orphaned_logs(self, expiring: set[str]) -> list[str]:
        """Runs with task log rows here that the store no longer has.

        With etcd every coordinator keeps the logs its workers sent it, and only the leader
        sweeps: a former leader's logs of runs deleted since go on its next sweep as a
        follower (:meth:`sweep_orphaned_logs`) or as leader.
        """
        logged = await self.c.task_logs.run_ids()
        if not logged:
            return []
        known = await self.c.store.run_ids()
        live = set(self.c.engine.state.runs)
        return sorted(logged - known - live - expiring)

    async def sweep_orphaned_logs(self) -> int:
        """A follower's sweep: delete log rows of runs the store no longer has; rows deleted."""
        async with self._lock:
            orphaned = await self._orphaned_logs(set())
            return await self.c.task_logs.delete_runs(orphaned) if orphaned else 0

    async def _orphans(self, now: float, expiring: set[str]) -> list[tuple[Path, int, int]]:
        """Artifact directories of runs the store does not have, untouched for the longest limit."""
        artifact_dir = self.artifact_dir
        longest = self.policy.longest_days()
        if artifact_dir is None or longest is None or not artifact_dir.is_dir():
            return []
        known = await self.c.store.run_ids()
        live = set(self.c.engine.state.runs)  # a run being submitted is in memory before its files exist
        before = now - longest * SECONDS_PER_DAY

        def scan() -> list[tuple[Path, int, int]]:
            found = []
            for entry in artifact_dir.iterdir():
                name = entry.name
                if (
                    name in known
                    or name in live
                    or name in expiring
                    or name.startswith(".")
                    or _is_store_value_dir(name)
                ):
                    continue
                try:
                    if _newest_mtime(entry) < before:
                        found.append((entry, *_tree_size(entry)))
                except FileNotFoundError:
                    continue
            return found

        return await asyncio.to_thread(scan)

    @staticmethod
    def _remove_all(paths: Sequence[Path]) -> None:
        for path in paths:
            try:
                _remove(path)
            except FileNotFoundError:
                continue
            except OSError:
                # The store no longer names it: the next sweep finds it as an orphan and tries again.
                log.exception("retention: cannot delete %s; the next sweep tries again", path)
