"""The autoscaler's loop in the leader coordinator, and its ``--autoscale-*`` flags.

Every ``interval_s`` the loop reads the state machine (read-only, a pass over connected
workers and active runs, between engine turns: nothing is added to the scheduling turn),
asks the pure :class:`~._autoscale.Autoscaler` for a decision, drains the workers it names
through the engine, and tells the provider the desired count and which drained workers may
go. A follower's loop does nothing; a failing provider is logged and asked again next
interval, never ends the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from xpipe._domain import DEPARTED_WORKER_STATES
from xpipe._retry import parse_duration_s
from xpipe._scaling import AutoscaleSettings

from ._autoscale import Autoscaler, Decision, Observation, WorkerLoad, tighten
from ._events import DrainRequested
from ._providers import PROVIDER_FACTORIES, AtMaxWorkers, LocalProvider, Provider, ProviderError, make_provider

if TYPE_CHECKING:
    from ._server import Coordinator
    from ._state import SchedulerState

__all__ = ["AutoscaleLoop", "add_autoscale_arguments", "observe", "pipeline_settings", "prepare_autoscaler",
           "start_autoscaler"]

log = logging.getLogger(__name__)


def _seconds(text: str) -> float:
    """A duration flag: seconds, or a string like "5min" (the SDK's units)."""
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_autoscale_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--autoscale-*`` flags (``[coordinator.autoscale]`` in the config file)."""
    d = AutoscaleSettings()
    g = p.add_argument_group("autoscaling (docs/autoscaling.md)")
    g.add_argument("--autoscale-provider", default="none", choices=list(PROVIDER_FACTORIES),
                   help="how workers are added and removed; 'none' (default) only observes")  # fmt: skip
    g.add_argument("--autoscale-min-workers", type=int, default=d.min_workers, help="never fewer workers")
    g.add_argument("--autoscale-max-workers", type=int, default=d.max_workers, help="never more workers")
    g.add_argument("--autoscale-ceiling-workers", type=int, default=None,
                   help="most workers a pipeline's configure_auto_scaling may ask for "
                        "(default: --autoscale-max-workers)")
    g.add_argument("--autoscale-scale-up-threshold", type=float, default=d.scale_up_threshold,
                   help="utilization (busy slots / slots, or CPU) at which workers are added (0..1)")
    g.add_argument("--autoscale-scale-down-threshold", type=float, default=d.scale_down_threshold,
                   help="utilization below which idle workers are drained and removed (0..1)")
    g.add_argument("--autoscale-scale-up-cooldown", type=_seconds, default=d.scale_up_cooldown_s, metavar="DURATION",
                   help="time between two scale-ups: seconds, or 30s, 5min, 1h")
    g.add_argument("--autoscale-scale-down-cooldown", type=_seconds, default=d.scale_down_cooldown_s,
                   metavar="DURATION", help="time after any scaling before a scale-down (seconds, or 10min)")
    g.add_argument("--autoscale-ignore-cpu", action="store_true",
                   help="size by busy slots and backlog only, not by hosts' CPU (workers sharing one host)")
    g.add_argument("--autoscale-interval", type=_seconds, default=d.interval_s, metavar="DURATION",
                   help="time between two decisions (seconds, or 30s)")
    g.add_argument("--autoscale-command", default="", metavar="SCRIPT",
                   help="command provider: the script run as SCRIPT scale DESIRED [WORKER...] and SCRIPT add RESOURCES")
    g.add_argument("--autoscale-command-timeout-s", type=float, default=60.0,
                   help="command provider: a call running longer is killed and retried next interval")
    g.add_argument("--autoscale-worker-args", default="", metavar="FLAGS",
                   help="local provider: flags every started xpipe-worker gets, e.g. '--slots 4 --import mymod'")
    g.add_argument("--autoscale-k8s-namespace", default="",
                   help="kubernetes provider: the Deployment's namespace (empty: the coordinator pod's own)")
    g.add_argument("--autoscale-k8s-deployment", default="xpipe-worker",
                   help="kubernetes provider: the workers' Deployment")
    g.add_argument("--autoscale-k8s-kubeconfig", default="", metavar="FILE",
                   help="kubernetes provider: a kubeconfig file (empty: the pod's service account, in the cluster)")


def settings_from_arguments(opts: argparse.Namespace) -> AutoscaleSettings:
    """Raises: ValueError naming the flag of a bad value."""
    try:
        return AutoscaleSettings(
            min_workers=opts.autoscale_min_workers, max_workers=opts.autoscale_max_workers,
            scale_up_threshold=opts.autoscale_scale_up_threshold,
            scale_down_threshold=opts.autoscale_scale_down_threshold,
            scale_up_cooldown_s=opts.autoscale_scale_up_cooldown,
            scale_down_cooldown_s=opts.autoscale_scale_down_cooldown, interval_s=opts.autoscale_interval,
            use_cpu=not opts.autoscale_ignore_cpu,
        )  # fmt: skip
    except ValueError as exc:
        # The settings name fields as the SDK spells them; name the flag as the operator typed it.
        field = str(exc).split("=", 1)[0].removesuffix("_s").replace("_", "-")
        raise ValueError(f"--autoscale-{field}: {exc}") from None


def observe(state: SchedulerState) -> Observation:
    """Connected workers and the ready backlog, read off the state machine (no copy of tasks)."""
    loads = []
    for w in state.workers.values():
        if not w.connected or w.state in DEPARTED_WORKER_STATES:
            continue
        m = w.metrics
        loads.append(WorkerLoad(
            w.worker_id, w.slots, len(w.assigned),
            m.cpu_percent / 100.0 if m is not None else None, m.memory_percent / 100.0 if m is not None else None,
            w.state == "draining",
        ))  # fmt: skip
    return Observation(tuple(loads), state.ready_backlog())


def pipeline_settings(state: SchedulerState) -> list[AutoscaleSettings]:
    """Settings of pipelines with active runs that configured autoscaling (checked at submit)."""
    out = []
    for run in state.runs.values():
        if run.finished_at or not run.spec.HasField("autoscale"):
            continue
        out.append(AutoscaleSettings.from_proto(run.spec.autoscale))
    return out


class AutoscaleLoop:
    """Observe, decide, act, every ``settings.interval_s``; see the module docs.

    Args:
        ceiling: most workers a pipeline's settings may ask for.
    """

    def __init__(self, coordinator: Coordinator, provider: Provider, settings: AutoscaleSettings, ceiling: int):
        self.c = coordinator
        self.provider = provider
        self.settings = settings
        self.ceiling = ceiling
        self.scaler = Autoscaler(settings)
        self.effective = settings
        self.last: Decision | None = None
        #: Workers this loop drained, until the provider was told they may go.
        self._drained: set[str] = set()
        self._told: tuple[int, tuple[str, ...]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.decisions = 0

    @property
    def leading(self) -> bool:
        election = self.c.election
        return election is None or election.is_leader

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="xpipe-autoscaler")

    async def stop(self) -> None:
        """Stop deciding, then stop what the provider started here (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.provider.close()

    def wake(self) -> None:
        """Decide now rather than at the end of the interval (the resource manager asked)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.leading or self.c.engine.fault is not None:
                continue  # a follower (or a coordinator riding out a store fault) leaves scaling alone
            try:
                await self.step(time.time())
            except Exception:
                log.exception("autoscaler step failed; trying again in %.1fs", self.settings.interval_s)

    def bounds(self) -> AutoscaleSettings:
        """The settings in force: the cluster's, tightened by active pipelines' settings."""
        return tighten(self.settings, pipeline_settings(self.c.engine.state), self.ceiling)

    async def step(self, now: float) -> Decision:
        """One observe-decide-act round."""
        engine = self.c.engine
        state = engine.state
        obs = observe(state)
        self.effective = self.bounds()
        decision = self.scaler.decide(now, obs, self.effective)
        self.last = decision
        self.decisions += 1
        if decision.action != "hold":
            log.info("autoscaler: %s to %d workers (%s)%s", decision.action, decision.desired, decision.reason,
                     f"; draining {', '.join(decision.drain)}" if decision.drain else "")  # fmt: skip
        for worker_id in decision.drain:
            engine.post(DrainRequested(now, worker_id, stimulus_id=f"autoscale-drain-{worker_id}"))
            self._drained.add(worker_id)
        # Drained workers that have left (or were lost) may now be removed by the provider.
        gone = []
        for worker_id in sorted(self._drained):
            w = state.workers.get(worker_id)
            if w is None or w.state in DEPARTED_WORKER_STATES or not w.connected:
                gone.append(worker_id)
        managed = await self.provider.current()
        fixed = 0 if managed is None else sum(1 for w in obs.active if not self.provider.owns(w.worker_id))
        target = max(0, decision.desired - fixed)
        call = (target, tuple(gone))
        if call != self._told or self.provider.call_every_interval:
            try:
                await self.provider.scale_to(target, gone)
            except ProviderError as exc:
                log.error("autoscaler: provider %s failed (asked again next interval): %s", self.provider.name, exc)
                self._told = None
                return decision
            self._told = call
            self._drained.difference_update(gone)
        return decision

    async def scale_by(self, factor: float) -> tuple[int, int, AutoscaleSettings]:
        """The resource manager's increase/reduce: (workers, desired, bounds in force)."""
        obs = observe(self.c.engine.state)
        n = len(obs.active)
        self.scaler.settings = self.effective = self.bounds()
        desired = self.scaler.request(max(0, math.ceil(n * factor) if factor >= 1 else math.floor(n * factor)))
        self.wake()
        return n, desired, self.effective

    async def add_worker(self, resources: Mapping[str, float]) -> str | None:
        """Ask the provider for one worker with ``resources``.

        Raises:
            ProviderError: at the bounds' max, or the provider failed.
        """
        obs = observe(self.c.engine.state)
        bounds = self.bounds()
        pending = max(0, (self.scaler.desired or 0) - len(obs.active))
        if len(obs.active) + pending >= bounds.max_workers:
            raise AtMaxWorkers(f"the cluster is at max_workers={bounds.max_workers}; no worker is added")
        name = await self.provider.add_worker(resources)
        # Counted as asked for, so the next decisions neither ask for it again nor drain it at once.
        self.scaler.desired = max(self.scaler.desired or 0, len(obs.active)) + 1
        self.scaler.last_up_at = time.time()
        return name


def usage_of(obs: Observation, loop: AutoscaleLoop | None) -> dict[str, float | int | str]:
    active = obs.active
    out: dict[str, float | int | str] = {
        "cpu_utilization": obs.cpu_utilization() or 0.0,
        "memory_utilization": obs.memory_utilization() or 0.0,
        "queue_backlog": obs.backlog,
        "workers": len(active),
        "slots": obs.slots(),
        "busy_slots": obs.busy_slots(),
        "provider": "none",
    }
    if loop is not None:
        bounds = loop.bounds()
        out.update(
            desired_workers=loop.scaler.desired or 0, min_workers=bounds.min_workers, max_workers=bounds.max_workers,
            provider=loop.provider.name, last_decision=loop.last.reason if loop.last else "",
        )  # fmt: skip
    return out


#: What :func:`prepare_autoscaler` checked: (settings, ceiling, provider or None).
Prepared = tuple[AutoscaleSettings, int, "Provider | None"]


def prepare_autoscaler(opts: argparse.Namespace) -> Prepared:
    """Check the ``--autoscale-*`` flags before anything starts: (settings, ceiling, provider).

    The provider is None for ``--autoscale-provider none``; a local provider learns the
    coordinator's address in :func:`start_autoscaler`.

    Raises:
        ValueError: a bad flag (names it).
    """
    settings = settings_from_arguments(opts)
    ceiling = opts.autoscale_ceiling_workers if opts.autoscale_ceiling_workers is not None else settings.max_workers
    if ceiling < settings.max_workers:
        raise ValueError(
            f"--autoscale-ceiling-workers={ceiling} is below --autoscale-max-workers={settings.max_workers}"
        )
    if opts.autoscale_provider == "none":
        return settings, ceiling, None
    return settings, ceiling, make_provider(opts, "")


def start_autoscaler(coordinator: Coordinator, prepared: Prepared) -> AutoscaleLoop | None:
    """Start the loop on a serving coordinator (None without a provider)."""
    settings, ceiling, provider = prepared
    if provider is None:
        return None
    if isinstance(provider, LocalProvider):
        provider.coordinator = coordinator.address
    loop = AutoscaleLoop(coordinator, provider, settings, ceiling)
    coordinator.autoscaler = loop
    loop.start()
    log.info("autoscaler on: provider %s, %d..%d workers, every %.1fs", provider.name, settings.min_workers,
             settings.max_workers, settings.interval_s)  # fmt: skip
    return loop
