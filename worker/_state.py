"""The worker's pure core: what it holds, what may start, what it owes the coordinator.

Like the coordinator's ``_state``, this is sans-IO so every rule here is tested by
feeding events and reading actions, with no stream, executor or clock: the daemon
(``_daemon``) turns gRPC messages and finished executor calls into events and carries the
actions out. ``now`` comes with each event (monotonic seconds, only used to age recent
outcomes); nothing here awaits, sleeps or reads a clock.

An attempt the worker holds is *queued* (received, waiting for a slot and its resources)
or *running* (handed to the executor). It leaves by being reported (its outcome goes to
the coordinator), given back (released, the coordinator requeues it elsewhere) or
cancelled before it started. Starts follow arrival order: a queued attempt that does not
fit yet holds back those behind it, so a big request is not starved by small ones.

Assignments are opaque here (``payload``): the core needs only the attempt's key and what
it asks of the worker, so the shell may keep the rest in whatever form is cheapest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Union

from xpipe._proto import common_pb2 as pb

__all__ = [
    "AttemptKey",
    "Need",
    "task_request",
    "ResourceLedger",
    "Offer",
    "AssignmentsReceived",
    "AttemptEnded",
    "CancelRequested",
    "DrainRequested",
    "GraceExpired",
    "OutcomesSent",
    "Start",
    "Report",
    "GiveBack",
    "CancelQueued",
    "StopRunning",
    "ShutdownCounts",
    "HeartbeatGate",
    "WorkerState",
    "RECENT_OUTCOMES_WINDOW_S",
    "RECENT_OUTCOMES_MAX",
]

#: (run id, task name, attempt number): one attempt, as the coordinator names it.
AttemptKey = tuple[str, str, int]
#: What one attempt asks of the worker: (cpu cores, memory bytes, gpus, custom amounts).
Need = tuple[float, int, int, dict[str, float]]

#: Outcomes sent within this window (and at most this many) are sent again on reconnect:
#: a coordinator that died before committing them still records each exactly once.
RECENT_OUTCOMES_WINDOW_S = 60.0
RECENT_OUTCOMES_MAX = 10_000

#: Why attempts are given back; the coordinator logs these with the requeue.
DRAIN_REASON = "worker draining"
GRACE_REASON = "worker stopped before the attempt finished"


def task_request(res: pb.Resources) -> Need:
    """What a task asks of this worker: (cpu, memory bytes, gpus, custom); no cpu means 1 core."""
    return (res.cpu_cores or 1.0, res.memory_bytes, res.gpu, dict(res.custom))


class ResourceLedger:
    """The worker's own account of what its running attempts use.

    The coordinator may send more than fits at once (prefetch); a queued attempt starts
    only when what it asks is free here, so running attempts never exceed what the worker
    offers. A request larger than the whole worker (the coordinator never sends one) runs
    alone on an idle worker rather than waiting forever.
    """

    def __init__(self, offered: pb.Resources):
        self.total: Need = task_request(offered) if offered.cpu_cores else (float("inf"), 0, 0, {})
        self._unbounded_memory = offered.memory_bytes == 0
        self.used_cpu = 0.0
        self.used_memory = 0
        self.used_gpu = 0
        self.used_custom: dict[str, float] = {}

    def fits(self, need: Need) -> bool:
        cpu, memory, gpu, custom = need
        t_cpu, t_memory, t_gpu, t_custom = self.total
        if not (self.used_cpu or self.used_memory or self.used_gpu or self.used_custom):
            return True  # an idle worker runs anything it was sent
        if self.used_cpu + cpu > t_cpu + 1e-9 or self.used_gpu + gpu > t_gpu:
            return False
        if not self._unbounded_memory and self.used_memory + memory > t_memory:
            return False
        if not custom:
            return True  # the common case: no generator to build
        return all(self.used_custom.get(k, 0.0) + v <= t_custom.get(k, 0.0) + 1e-9 for k, v in custom.items())

    def acquire(self, need: Need) -> None:
        self._apply(need, 1)

    def release(self, need: Need) -> None:
        self._apply(need, -1)

    def _apply(self, need: Need, sign: int) -> None:
        cpu, memory, gpu, custom = need
        self.used_cpu += sign * cpu
        self.used_memory += sign * memory
        self.used_gpu += sign * gpu
        if not custom:
            return
        for k, v in custom.items():
            left = self.used_custom.get(k, 0.0) + sign * v
            if abs(left) > 1e-9:
                self.used_custom[k] = left
            else:
                self.used_custom.pop(k, None)


# ---------------------------------------------------------------------- events

# Events and actions are slotted dataclasses that nothing changes after it is made. The
# few made once per task (Offer, AttemptEnded, Start, Report) are not frozen: a
# frozen dataclass's __init__ costs about 8x a plain one (2 us against 0.25 us measured
# here), which was most of what the core added per task.


@dataclass(slots=True)  # per task: not frozen, see above
class Offer:
    """One assignment as received: its key, what it asks, and the shell's opaque payload."""

    key: AttemptKey
    need: Need
    payload: Any = None


@dataclass(frozen=True, slots=True)
class AssignmentsReceived:
    now: float
    offers: tuple[Offer, ...]


@dataclass(slots=True)  # per task: not frozen, see above
class AttemptEnded:
    """The executor returned for a running attempt; ``outcome`` is what to report."""

    now: float
    key: AttemptKey
    outcome: Any


@dataclass(frozen=True, slots=True)
class CancelRequested:
    now: float
    key: AttemptKey


@dataclass(frozen=True, slots=True)
class DrainRequested:
    """Stop taking work (SIGTERM, or the coordinator's Drain): queued attempts go back."""

    now: float


@dataclass(frozen=True, slots=True)
class GraceExpired:
    """The drain's grace is over: attempts still running are given back and stopped."""

    now: float


@dataclass(frozen=True, slots=True)
class OutcomesSent:
    """These outcomes left on the stream; kept a while to send again on re-register."""

    now: float
    outcomes: tuple[tuple[AttemptKey, Any], ...]


Event = Union[AssignmentsReceived, AttemptEnded, CancelRequested, DrainRequested, GraceExpired, OutcomesSent]

# ---------------------------------------------------------------------- actions


@dataclass(slots=True)  # per task: not frozen, see above
class Start:
    """Hand this attempt to the executor."""

    key: AttemptKey
    payload: Any


@dataclass(slots=True)  # per task: not frozen, see above
class Report:
    """Send this attempt's outcome to the coordinator."""

    key: AttemptKey
    outcome: Any


@dataclass(frozen=True, slots=True)
class GiveBack:
    """Tell the coordinator this worker released the attempt (it requeues it elsewhere)."""

    key: AttemptKey
    reason: str


@dataclass(frozen=True, slots=True)
class CancelQueued:
    """Report the attempt cancelled before it started."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class StopRunning:
    """Ask the executor to stop this running attempt."""

    key: AttemptKey


Action = Union[Start, Report, GiveBack, CancelQueued, StopRunning]


@dataclass(frozen=True, slots=True)
class ShutdownCounts:
    """What became of the attempts this worker took, for its final log line."""

    finished: int
    given_back: int
    held: int

    def line(self, unsent: int = 0) -> str:
        """``unsent``: outcomes the shell could not deliver; those and any still held are lost."""
        return f"worker stopped: {self.finished} finished, {self.given_back} given back, {self.held + unsent} lost"


# ---------------------------------------------------------------------- the state


class HeartbeatGate:
    """Whether a heartbeat is due, or the outcomes just sent already said the worker is alive.

    The coordinator takes a Succeeded or Failed outcome as a sign of life, as it takes a
    heartbeat (``last_seen``). So a heartbeat due within one interval of sending outcomes
    is skipped: a busy worker beats at most half as often (a fleet of 1,000 in a wide run
    sent 17-89 heartbeats a second instead of 250; docs/performance.md). A heartbeat also
    lists what the worker holds (the coordinator requeues what it sent that is not held)
    and carries the machine's load, so never two are skipped in a row: the coordinator
    still hears one at least every second interval, well inside its timeout (several
    intervals), and an idle worker beats every interval.
    """

    __slots__ = ("results_at", "skipped_last", "sent", "skipped")

    def __init__(self) -> None:
        self.results_at = float("-inf")  # when outcomes were last handed to the stream
        self.skipped_last = False
        self.sent = 0
        self.skipped = 0

    def results_sent(self, now: float) -> None:
        """Outcomes (Succeeded or Failed) went out at ``now``."""
        self.results_at = now

    def due(self, now: float, interval_s: float) -> bool:
        """True: send the heartbeat due at ``now``; False: skip it (counted in ``skipped``)."""
        if not self.skipped_last and now - self.results_at < interval_s:
            self.skipped_last = True
            self.skipped += 1
            return False
        self.skipped_last = False
        self.sent += 1
        return True


@dataclass
class WorkerState:
    """Held attempts, the start queue, the resource ledger and recent outcomes of one worker.

    Args:
        slots: attempts run at once at most.
        offered: the resources this worker offers.
    """

    slots: int
    offered: pb.Resources
    recent_window_s: float = RECENT_OUTCOMES_WINDOW_S
    recent_max: int = RECENT_OUTCOMES_MAX
    #: Attempts held (queued or running), in arrival order: (need, payload) by key.
    held: OrderedDict[AttemptKey, tuple[Need, Any]] = field(default_factory=OrderedDict)
    #: Keys of queued attempts in arrival order; may hold keys already gone (skipped lazily).
    queue: deque[AttemptKey] = field(default_factory=deque)
    running: set[AttemptKey] = field(default_factory=set)
    draining: bool = False
    finished: int = 0
    given_back: int = 0
    #: Outcomes already sent: (now, outcome) by attempt, oldest first.
    recent: OrderedDict[AttemptKey, tuple[float, Any]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        self.ledger = ResourceLedger(self.offered)

    # ------------------------------------------------------------------ queries

    @property
    def idle(self) -> bool:
        return not self.held

    def queued(self) -> list[AttemptKey]:
        return [k for k in self.queue if k in self.held and k not in self.running]

    def recent_outcomes(self) -> list[Any]:
        """Outcomes to send again in the next Register, oldest first."""
        return [outcome for _, outcome in self.recent.values()]

    def counts(self) -> ShutdownCounts:
        return ShutdownCounts(finished=self.finished, given_back=self.given_back, held=len(self.held))

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; the actions the shell must carry out, in order."""
        if isinstance(event, AttemptEnded):  # the hot path first
            return self._ended(event)
        if isinstance(event, AssignmentsReceived):
            return self._received(event)
        if isinstance(event, OutcomesSent):
            self._remember(event)
            return []
        if isinstance(event, CancelRequested):
            return self._cancel(event.key)
        if isinstance(event, DrainRequested):
            return self._drain()
        if isinstance(event, GraceExpired):
            return self._grace_expired()
        raise TypeError(f"WorkerState cannot handle {type(event).__name__}")

    def _received(self, event: AssignmentsReceived) -> list[Action]:
        actions: list[Action] = []
        for offer in event.offers:
            if self.draining:
                self.given_back += 1
                actions.append(GiveBack(offer.key, DRAIN_REASON))
            elif offer.key not in self.held:  # else a duplicate after a reconnect
                self.held[offer.key] = (offer.need, offer.payload)
                self.queue.append(offer.key)
        self._admit(actions)
        return actions

    def _ended(self, event: AttemptEnded) -> list[Action]:
        key = event.key
        if key not in self.running:
            return []  # given back at shutdown: the coordinator requeues it, do not report twice
        self.running.remove(key)
        self.ledger.release(self.held.pop(key)[0])
        self.finished += 1
        actions: list[Action] = [Report(key, event.outcome)]
        self._admit(actions)
        return actions

    def _cancel(self, key: AttemptKey) -> list[Action]:
        if key not in self.held:
            return []
        if key in self.running:
            return [StopRunning(key)]  # the executor ends it; its outcome reports CANCELLED
        del self.held[key]
        actions: list[Action] = [CancelQueued(key)]
        self._admit(actions)  # it may have held back those behind it
        return actions

    def _drain(self) -> list[Action]:
        if self.draining:
            return []
        self.draining = True
        actions: list[Action] = []
        for key in [k for k in self.held if k not in self.running]:
            del self.held[key]
            self.given_back += 1
            actions.append(GiveBack(key, DRAIN_REASON))
        self.queue.clear()
        return actions

    def _grace_expired(self) -> list[Action]:
        actions: list[Action] = self._drain()
        for key in list(self.running):
            need, _ = self.held.pop(key)
            self.running.discard(key)
            self.ledger.release(need)
            self.given_back += 1
            actions += [GiveBack(key, GRACE_REASON), StopRunning(key)]
        return actions

    def _admit(self, actions: list[Action]) -> None:
        """Start queued attempts in arrival order while a slot and their resources are free."""
        queue, held, running, ledger = self.queue, self.held, self.running, self.ledger
        while queue and len(running) < self.slots:
            key = queue[0]
            entry = held.get(key)
            if entry is None or key in running:
                queue.popleft()  # cancelled or given back while queued
                continue
            need, payload = entry
            if not ledger.fits(need):
                return  # first come, first served: it waits, and so do those behind it
            queue.popleft()
            running.add(key)
            ledger.acquire(need)
            actions.append(Start(key, payload))

    def _remember(self, event: OutcomesSent) -> None:
        recent = self.recent
        for key, outcome in event.outcomes:
            recent[key] = (event.now, outcome)
            recent.move_to_end(key)
        horizon = event.now - self.recent_window_s
        while recent and (len(recent) > self.recent_max or next(iter(recent.values()))[0] < horizon):
            recent.popitem(last=False)

    def validate(self) -> None:
        """Check the invariants (tests call this after each step)."""
        assert self.running <= self.held.keys(), "running attempts not held"
        assert len(self.running) <= self.slots, f"{len(self.running)} running on {self.slots} slots"
        assert not (self.draining and self.held.keys() - self.running), "queued work while draining"
        used = sum(self.held[k][0][0] for k in self.running)
        assert abs(used - self.ledger.used_cpu) < 1e-6, f"ledger says {self.ledger.used_cpu} cpu, running use {used}"
