"""What the servicers ask the state machine, answered from its entries (read-only).

A mixin of :class:`~._state.SchedulerState`, kept apart so the machine's module holds its
transitions; these methods only read ``runs``, ``workers`` and the transition log, so the
servicers ask them instead of re-deriving the rules from the entries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from xpipe._domain import DEPARTED_WORKER_STATES, TERMINAL_RUN_STATES

from ._events import StoryEntry, TaskRecord
from ._invariants import check_invariants

if TYPE_CHECKING:
    from ._entries import RunEntry, WorkerEntry

__all__ = ["StateQueries"]


class StateQueries:
    """Read-only questions about a :class:`~._state.SchedulerState` (mixed into it)."""

    # Provided by SchedulerState.
    runs: dict[str, RunEntry]
    workers: dict[str, WorkerEntry]
    transitions: deque
    _stimulus: str
    _ready: list

    def ready_backlog(self) -> int:
        """Ready tasks waiting for a slot (the autoscaler's backlog; an upper bound, as the
        ready heap drops cancelled entries lazily)."""
        return len(self._ready)

    def story(self, run_id: str, task: str = "") -> list[StoryEntry] | None:
        """The transition log's entries of one run (``task``: of that task), oldest first.

        None when the run is not in memory (ask the store: ``_story.story_from_records``).
        The log is bounded (``TRANSITION_LOG_ENTRIES``), so a run older than the last
        entries it holds tells only its recent part.
        """
        if run_id not in self.runs:
            return None
        if task:
            return [e for e in self.transitions if e[2] == run_id and e[3] == task]
        return [e for e in self.transitions if e[2] == run_id]

    def active_runs(self) -> int:
        return sum(1 for r in self.runs.values() if r.state not in TERMINAL_RUN_STATES)

    def run_is_terminal(self, run_id: str) -> bool | None:
        """Whether a run held in memory has ended; None when it is not in memory."""
        run = self.runs.get(run_id)
        return None if run is None else run.state in TERMINAL_RUN_STATES

    def worker_by_name(self, name: str) -> WorkerEntry | None:
        for worker in self.workers.values():
            if worker.name == name and worker.state not in DEPARTED_WORKER_STATES:
                return worker
        return None

    def worker_name(self, worker_id: str) -> str | None:
        """The name a worker registered with, or None for an id we do not know."""
        worker = self.workers.get(worker_id)
        return None if worker is None else worker.name

    @staticmethod
    def worker_shown_state(worker: WorkerEntry) -> str:
        """What operators see: one of ``xpipe._domain.WORKER_STATES``."""
        if worker.state in DEPARTED_WORKER_STATES:
            return worker.state
        if not worker.connected:
            return "disconnected"
        if worker.state == "draining":
            return "draining"
        return "busy" if len(worker.assigned) >= worker.slots else "ready"

    def connected_workers(self) -> int:
        """Workers that are registered, connected and not lost."""
        return sum(1 for w in self.workers.values() if w.state != "lost" and w.connected)

    def validate(self) -> None:
        """Check invariants; raises AssertionError naming the first one broken (see ``_invariants``)."""
        check_invariants(self)

    def iter_records(self, run_id: str) -> Iterable[TaskRecord]:
        run = self.runs[run_id]
        for t in run.tasks.values():
            yield TaskRecord(
                run_id, t.name, t.state, t.attempt, t.worker, t.started_at, t.finished_at, t.error, t.result,
                stimulus_id=self._stimulus, history=t.history, telemetry=t.telemetry, cache_hit=t.cache_hit,
            )  # fmt: skip

    # ------------------------------------------------------------------ unhealthy workers
    # What AdminService.ForgetWorkers and ClusterStatus.unhealthy_workers need.

    @staticmethod
    def is_unhealthy(worker: WorkerEntry) -> bool:
        """Lost (past its heartbeat deadline) or disconnected (its stream ended); a drained worker left as asked."""
        return worker.state == "lost" or (not worker.connected and worker.state != "drained")

    @classmethod
    def is_forgettable(cls, worker: WorkerEntry) -> bool:
        """Unhealthy, or drained: what ForgetWorkers may drop (never a connected worker)."""
        return worker.state == "drained" or cls.is_unhealthy(worker)

    def unhealthy_workers(self) -> list[str]:
        """Names of unhealthy workers, sorted; a name also held by a healthy worker (one
        restarted under a new id) is healthy, whatever ghost entries it left."""
        healthy = {w.name for w in self.workers.values() if not self.is_forgettable(w)}
        return sorted({w.name for w in self.workers.values() if self.is_unhealthy(w)} - healthy)

    def sort_for_forgetting(self, names: Iterable[str]) -> tuple[list[str], list[str], list[str], list[str]]:
        """(forgotten, healthy, unknown) names, each once in the order given, and the ids of
        the unhealthy workers behind the forgotten ones (what AdminService.ForgetWorkers posts)."""
        by_name: dict[str, list[WorkerEntry]] = {}
        for w in self.workers.values():
            by_name.setdefault(w.name, []).append(w)
        forgotten: list[str] = []
        healthy: list[str] = []
        unknown: list[str] = []
        ids: list[str] = []
        for name in dict.fromkeys(names):
            entries = by_name.get(name)
            if not entries:
                unknown.append(name)
                continue
            sick = [w.worker_id for w in entries if self.is_forgettable(w)]
            (forgotten if sick else healthy).append(name)
            ids.extend(sick)
        return forgotten, healthy, unknown, ids
