"""``AdminService``: what operators and the CLI ask of a cluster (status, workers, stories,
installs), and the install requests waiting for workers' answers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

import grpc

from xpipe._domain import VERSION
from xpipe._install import FAILED
from xpipe._limits import DEFAULT_INSTALL_TIMEOUT_S
from xpipe._limits import shown as quoted
from xpipe._proto import admin_pb2, admin_pb2_grpc, worker_pb2

from ._events import DrainRequested, WorkersForgotten
from ._validate import check_install_request

if TYPE_CHECKING:
    from ._engine import Engine
    from ._server import Coordinator

__all__ = ["AdminServicer", "InstallRequests"]

log = logging.getLogger(__name__)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Cluster status, workers, stories and installs for operators and the CLI."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    @property
    def engine(self) -> Engine:  # looked up per call: an HA coordinator gets a fresh engine each term
        return self.c.engine

    async def GetClusterStatus(self, request, context):
        state = self.engine.state
        leader, members, term = await self.c.cluster_view()
        leading = self.c.election is None or self.c.election.is_leader
        return admin_pb2.ClusterStatus(
            coordinator_id=self.c.coordinator_id,
            leader_address=leader,
            members=members,
            term=term,
            workers=state.connected_workers(),
            active_runs=state.active_runs(),
            version=VERSION,
            circuits=[
                admin_pb2.CircuitInfo(name=c.name, state=c.state, failures=c.failures, opened_at=c.opened_at)
                for c in state.breakers.snapshot(time.time())
            ],
            unhealthy_workers=state.unhealthy_workers(),
            dashboard_url=self.c.dashboard_url,
            # As the metrics show them (the state's copy). A follower schedules nothing: it
            # tells no worker a pace (0, like its counts).
            heartbeat_interval_s=state.heartbeat_interval_s if leading else 0.0,
            heartbeat_timeout_s=state.heartbeat_timeout_s if leading else 0.0,
        )

    async def ListWorkers(self, request, context):
        out = []
        state = self.engine.state
        for w in state.workers.values():
            info = admin_pb2.WorkerInfo(
                worker_id=w.worker_id, name=w.name, host=w.host, state=state.worker_shown_state(w), slots=w.slots,
                running=len(w.assigned),
                labels=w.labels, handlers=sorted(w.handlers), last_heartbeat=w.last_seen,
                memory_enforcement=w.memory_enforcement,
            )  # fmt: skip
            if w.resources is not None:
                info.resources.CopyFrom(w.resources)
            if w.metrics is not None:
                info.metrics.CopyFrom(w.metrics)
            out.append(info)
        return admin_pb2.ListWorkersResponse(workers=out)

    async def DrainWorker(self, request, context):
        worker = self.engine.state.worker_by_name(request.name)
        if worker is None:
            return admin_pb2.DrainWorkerResponse(found=False)
        self.engine.post(DrainRequested(time.time(), worker.worker_id, stimulus_id=f"rpc-drain-{worker.worker_id}"))
        return admin_pb2.DrainWorkerResponse(found=True)

    async def ForgetWorkers(self, request, context):
        """Sort the names now, and forget the unhealthy ones in the engine's next turn.

        The state machine checks each worker again when it handles the event, so one that
        reconnected in between is kept.
        """
        forgotten, healthy, unknown, ids = self.engine.state.sort_for_forgetting(request.names)
        if ids:
            self.engine.post(WorkersForgotten(time.time(), tuple(ids), stimulus_id=f"rpc-forget-{len(ids)}"))
        return admin_pb2.ForgetWorkersResponse(forgotten=forgotten, healthy=healthy, unknown=unknown)

    async def GetStory(self, request, context):
        try:
            entries = await self.engine.story(request.run_id, request.task)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if entries is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {quoted(request.run_id)}")
        return admin_pb2.GetStoryResponse(
            entries=[
                admin_pb2.StoryEntry(time=t, stimulus_id=sid, task=name, attempt=attempt, from_state=frm,
                                     to_state=to, reason=reason)
                for t, sid, _, name, attempt, frm, to, reason in entries
            ]
        )  # fmt: skip

    async def InstallDependencies(self, request, context):
        """Ask every connected worker to pip-install; answer when all did or the time is up.

        Workers answer INSTALLED, REFUSED (no ``--allow-install``, or a name they refuse) or
        FAILED (pip failed, overran, or the worker left); one that has not answered within
        ``timeout_s`` plus :data:`_INSTALL_ANSWER_GRACE_S` is reported FAILED "no answer".
        """
        problem = check_install_request(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"InstallDependencies: {problem}")
        engine = self.engine
        sessions = list(engine.sessions.values())
        if not sessions:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "InstallDependencies: no worker is connected")
        timeout_s = request.timeout_s or DEFAULT_INSTALL_TIMEOUT_S
        request_id = uuid.uuid4().hex
        message = worker_pb2.CoordinatorMessage(
            install=worker_pb2.InstallPackages(request_id=request_id, packages=request.packages, timeout_s=timeout_s)
        )
        answers = self.c.installs.expect(request_id, sessions)
        log.info("InstallDependencies %s: asking %d workers (request %s)", list(request.packages)[:8], len(sessions),
                 request_id)  # fmt: skip
        for session in sessions:
            session.outbox.put_nowait(message)
        wait_s = timeout_s + _INSTALL_ANSWER_GRACE_S
        try:
            await asyncio.wait(answers.values(), timeout=wait_s)
        finally:
            self.c.installs.forget(request_id)
        results = []
        for session in sessions:
            answer = answers[id(session)]
            name = engine.state.worker_name(session.worker_id) or session.worker_id
            if answer.done():
                got = answer.result()
                results.append(admin_pb2.WorkerInstallResult(
                    worker=name, status=got.status, message=got.message, output_tail=got.output_tail
                ))  # fmt: skip
            else:
                results.append(admin_pb2.WorkerInstallResult(
                    worker=name, status=FAILED, message=f"no answer within {wait_s:g} s"
                ))  # fmt: skip
        results.sort(key=lambda r: r.worker)
        log.info("InstallDependencies %s: %s", list(request.packages)[:8],
                 ", ".join(f"{r.worker} {r.status}" for r in results))  # fmt: skip
        return admin_pb2.InstallDependenciesResponse(results=results)


#: Beyond the workers' own pip limit, how long InstallDependencies waits for their answers.
_INSTALL_ANSWER_GRACE_S = 5.0


class InstallRequests:
    """Install requests waiting for workers' answers, by request id and worker stream.

    Shell state, not scheduling state: nothing here is stored or replayed; a coordinator that
    restarts mid-install fails its caller's call, which asks again. Streams are keyed by
    identity (``id``): a worker that reconnected owes nothing on its new stream.
    """

    def __init__(self) -> None:
        self._pending: dict[str, dict[int, asyncio.Future]] = {}  # request id -> {id(session): answer}

    def expect(self, request_id: str, sessions: list) -> dict[int, asyncio.Future]:
        loop = asyncio.get_running_loop()
        answers = {id(session): loop.create_future() for session in sessions}
        self._pending[request_id] = answers
        return answers

    def answer(self, session, result: worker_pb2.InstallResult) -> None:
        future = self._pending.get(result.request_id, {}).get(id(session))
        if future is None:
            log.info("install answer %s from worker %s matches no request (late); ignored",
                     result.request_id[:16], session.worker_id)  # fmt: skip
        elif not future.done():
            future.set_result(result)

    def lost(self, session) -> None:
        """A worker stream ended: what it owed is FAILED now, not after the whole timeout."""
        for answers in self._pending.values():
            future = answers.get(id(session))
            if future is not None and not future.done():
                future.set_result(worker_pb2.InstallResult(
                    status=FAILED, message="the worker disconnected before answering"
                ))  # fmt: skip

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)
