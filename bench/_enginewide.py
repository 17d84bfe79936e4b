"""A wide run driven through the coordinator's engine in-process, for per-task cost probes.

No store, no network: ``WORKERS`` fake worker sessions, ``TASKS`` no-op tasks, every
assignment answered at once with an empty result, and the outboxes drained, so what is
measured is the state machine plus dispatch (assignment bytes included). Used by
``tracing_cost`` and ``trust_cost``.
"""

from __future__ import annotations

from collections.abc import Callable

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import Engine, EngineConfig, _Session
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded, WorkerConnected
from xpipe.coordinator._validate import validate_spec

__all__ = ["SLOTS", "TASKS", "WORKERS", "drive", "run_wide", "wide_engine", "wide_spec"]

TASKS = 10_000
WORKERS, SLOTS = 4, 8


def wide_engine(config: EngineConfig) -> Engine:
    """An engine without a store, with ``WORKERS`` connected workers of ``SLOTS`` slots."""
    engine = Engine(store=None, config=config)  # type: ignore[arg-type]
    for w in range(WORKERS):
        engine.state.handle(WorkerConnected(0.0, f"w{w}", f"w{w}", "host", SLOTS))
        engine.sessions[f"w{w}"] = _Session(f"w{w}")
    return engine


def wide_spec(tasks: int = TASKS, **fields) -> pb.PipelineSpec:
    """A pipeline of ``tasks`` importable no-op tasks (``fields`` set on the spec)."""
    spec = pb.PipelineSpec(name="wide", **fields)
    for i in range(tasks):
        spec.tasks.add(name=f"t{i}").python.import_path = "bench.tasks:noop"
    return spec


def drive(engine: Engine, spec: pb.PipelineSpec, answers: dict[str, pb.Payload] | None = None) -> None:
    """Submit ``spec`` as run r1 and drive it until the run ends: every assignment is answered
    at once, with ``answers[task]`` or an empty result, and the outboxes drained."""
    state = engine.state
    empty = pb.Payload(codec=pb.CODEC_RAW, data=b"")
    answers = answers or {}
    state.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    run = state.runs["r1"]
    now = 0.0
    while run.state == pb.RUN_RUNNING:
        actions: list = []
        state.schedule(now, actions)
        engine._dispatch(actions, engine._number_assignments(actions))
        sent = [a for a in actions if isinstance(a, Assign)]
        if not sent:
            raise RuntimeError("the run stalled: nothing was assigned")
        for action in sent:
            now += 1e-6
            state.handle(TaskSucceeded(now, action.worker_id, action.attempt, now, answers.get(action.attempt[1], empty)))
        for session in engine.sessions.values():
            while not session.outbox.empty():
                session.outbox.get_nowait()


def run_wide(engine: Engine, spec: pb.PipelineSpec, before: Callable[[], None] | None = None) -> None:
    """Submit ``spec`` as run r1 and drive it to the end (``before`` runs first, in the timed part)."""
    if before is not None:
        before()
    drive(engine, spec)
