"""Recovery handlers inside the state machine: park, ask a worker, apply the answer.

A run with ``@pipeline.recovery_handler`` parks a task that failed for good in RECOVERING
and sends a worker a synthetic attempt ``(run_id, "<task>/recovery", n)`` that runs the
handler; its answer (read by ``_recovery``) decides the task's fate. A mixin of
:class:`~._state.SchedulerState`, kept apart so the machine's main flow stays short; it
uses the machine's own helpers (``_move``, ``_fail_for_good``, ...) and is as pure.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from xpipe._proto import common_pb2 as pb

from ._events import Action, Assign, AttemptKey, TaskFailed, TaskSucceeded
from ._placement import Request
from ._recovery import (
    CONTINUE,
    HALT,
    RETRY_WITH_FALLBACK,
    SKIP,
    RecoveryCodec,
    read_decision,
    recovery_args,
    recovery_name,
    recovery_spec,
)

if TYPE_CHECKING:
    from ._entries import RunEntry, TaskEntry

__all__ = ["RecoveryFlow"]

log = logging.getLogger("xpipe.coordinator._state")

#: What a recovery handler's synthetic attempt asks of a worker: a slot, next to no cpu.
_RECOVERY_REQUEST = Request(cpu_milli=1)


class RecoveryFlow:
    """The recovery-handler part of :class:`~._state.SchedulerState` (a mixin)."""

    __slots__ = ()

    def _queue_recovery(self, run: RunEntry, task: TaskEntry) -> None:
        run.recovering[task.name] = (0, "")
        self._recoveries.append((run.run_id, task.name))

    def _send_recoveries(self, now: float, out: list[Action]) -> None:
        """Send queued recovery-handler calls to workers with room; the rest wait for one."""
        waiting: deque[tuple[str, str]] = deque()
        while self._recoveries:
            run_id, name = self._recoveries.popleft()
            run = self.runs.get(run_id)
            task = run.tasks.get(name) if run else None
            if task is None or task.state != pb.RECOVERING or run.recovering.get(name) != (0, ""):
                continue  # cancelled meanwhile, or already sent
            assert run.handler is not None
            worker_id = self.placement.pick(
                _RECOVERY_REQUEST, strategy=run.strategy, code="pickle" if run.handler.code_hash else "import"
            )
            if worker_id is None:
                waiting.append((run_id, name))
                continue
            worker = self.workers[worker_id]
            run.recovery_seq += 1
            key = (run_id, recovery_name(name), run.recovery_seq)
            run.recovering[name] = (run.recovery_seq, worker_id)
            worker.assigned[key] = now
            self.placement.hold(worker_id, key, _RECOVERY_REQUEST)
            args = recovery_args(name, task.error, run_id=run_id, pipeline=run.name, attempt=task.attempt)
            spec = recovery_spec(name, run.handler, self._recovery_codec().encode_args(args))
            code: tuple[pb.CodeBlob, ...] = ()
            code_hash = run.handler.code_hash
            if code_hash and code_hash not in worker.sent_code and code_hash in run.code:
                worker.sent_code.add(code_hash)
                code = (run.code[code_hash],)
            out.append(Assign(worker_id, key, spec, (), code, True, principal=run.principal))
        self._recoveries = waiting

    def _recovery_codec(self) -> RecoveryCodec:
        if self.recovery_codec is None:
            raise RuntimeError("a recovery handler is due but this SchedulerState was given no recovery_codec")
        return self.recovery_codec

    def _on_recovery_result(self, ev: TaskSucceeded | TaskFailed, name: str, out: list[Action]) -> None:
        """Apply a recovery handler's answer for task ``name`` (stale answers are dropped)."""
        run = self.runs.get(ev.attempt[0])
        task = run.tasks.get(name) if run else None
        if task is None or task.state != pb.RECOVERING or run.recovering.get(name, (0,))[0] != ev.attempt[2]:
            self.stale_results += 1
            log.info("dropped stale recovery answer for attempt %s from worker %s", ev.attempt, ev.worker_id)
            return
        del run.recovering[name]
        if isinstance(ev, TaskSucceeded):
            decision, problem = read_decision(ev.result, None, self._recovery_codec().decode_result)
        else:
            decision, problem = read_decision(None, ev.error, self._recovery_codec().decode_result)
        log.info("run %s: recovery handler for task %r answered %s%s", run.run_id, name, decision,
                 f" ({problem})" if problem else "")  # fmt: skip
        error = pb.TaskError()
        if task.error is not None:
            error.CopyFrom(task.error)
        task.finished_at = ev.now
        if decision == RETRY_WITH_FALLBACK:
            self._move(run, task, pb.READY, out)  # last_try is set: a fallback runs if it fails
        elif decision == SKIP:
            error.skipped = True
            error.message = f"skipped by the recovery handler after: {error.message}"
            task.error, task.result = error, None
            self._move(run, task, pb.SKIPPED, out)
            self._release_dependents(run, task, out)
        elif decision == HALT:
            error.message += " (the recovery handler halted the pipeline)"
            task.error = error
            run.halted = True
            self._move(run, task, pb.FAILED, out)
            self._fail_dependents(run, task, out)
            self._stop_run_after_failure(
                run, task, ev.now, out, why=f"the recovery handler halted the pipeline after task {name!r} failed"
            )
        else:
            assert decision == CONTINUE
            if problem:
                error.message += f" ({problem})"
            task.error = error
            self._fail_for_good(run, task, ev.now, out)
        self._maybe_finish(run, ev.now, out)

    def _requeue_recovery(self, key: AttemptKey, name: str, reason: str) -> None:
        run = self.runs.get(key[0])
        task = run.tasks.get(name) if run else None
        if task is None or task.state != pb.RECOVERING or run.recovering.get(name, (0,))[0] != key[2]:
            return
        log.warning("resending recovery handler call %s: %s", key, reason)
        self._queue_recovery(run, task)
