"""The ``xpipe-worker`` daemon: one stream to the coordinator, tasks run in an executor.

The worker keeps what it holds (assignments queued or running) across reconnects and
reports it in ``Register`` and every heartbeat, so a coordinator that restarted or a
stream that broke loses nothing. Task events go out in batches: whatever finished while
the previous message was being written rides the next one.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import grpc
import psutil
from google.protobuf.message import DecodeError
from xpipe._backoff import Backoff
from xpipe._domain import task_error
from xpipe._handlers import handler_names
from xpipe._install import INSTALLED
from xpipe._limits import (
    CLIENT_KEEPALIVE_OPTIONS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    normalize_resources,
)
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe._sdnotify import notifier
from xpipe.security._auth import AUTHORIZATION_KEY, authorization_value
from xpipe.security._tls import TLSConfig
from xpipe.security._atrest import AtRest, at_rest
from xpipe.telemetry._logformat import log_ids
from xpipe.telemetry._tasklogs import TASK_LOG_MAX_BYTES
from xpipe.telemetry._tracing import TracingConfig

from xpipe.security._codetrust import CODE_KINDS

from . import _state as core
from ._cache import WorkerCache, default_cache_dir
from ._codegate import CodeGate, Refused
from ._executor import TaskExecutor, make_executor
from ._install import PipInstaller, default_install_dir
from ._objects import ARTIFACT_MIN_BYTES, artifact_path, by_reference, write_artifact
from ._runtask import failed_event
from ._state import ResourceLedger, WorkerState, task_request
from ._tasklogs import TaskLogBuffer, pii_values_of

__all__ = ["WorkerConfig", "WorkerDaemon", "detect_resources", "ResourceLedger", "task_request"]

log = logging.getLogger(__name__)

#: While more assignments wait in the local queue, outcomes wait up to this long (or until
#: EVENT_BATCH_MAX of them) to leave together: one message per batch, not per task.
#: 5 ms (was 2): a quarter of the ~20 ms of queued work prefetch aims at, so slots never
#: starve; a 10,000-task wide run sends ~1,100 outcome messages instead of ~2,900, and the
#: coordinator takes ~860 turns instead of ~2,300 (docs/performance.md, round 2). A worker
#: with nothing queued sends at once, so round trips and chains do not wait.
EVENT_LINGER_S = 0.005
EVENT_BATCH_MAX = 256
#: A task running longer than this reports its start in its own event.
STARTED_REPORT_DELAY_S = 0.05
#: A session that lasted this long was healthy: after it breaks, reconnecting starts again
#: from the shortest wait.
_HEALTHY_SESSION_S = 5.0
#: While a live member says a leader is being elected, ask again at least this often.
_ELECTION_POLL_S = 0.2
#: After the drain grace, how long the last outcomes may take to leave. The systemd unit's
#: TimeoutStopSec covers the grace plus this (deploy/systemd/xpipe-worker@.service).
SHUTDOWN_FLUSH_S = 5.0

#: The stream is opened by path so that replies parse as CoordinatorMessageView (the same
#: wire format as CoordinatorMessage, assignments kept as bytes): see ``_accept``.
_CONNECT_METHOD = "/xpipe.v1.WorkerService/Connect"
_parse_head = worker_pb2.AssignmentHead.FromString
#: Outcomes the coordinator takes as a sign of life (``last_seen``), as a heartbeat.
_RESULT_KINDS = frozenset({"succeeded", "failed"})

#: A coordinator that refuses this worker's credential will refuse it again: the worker
#: exits (status 2, one log line naming the reason) rather than retry for ever.
REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
    # The same pings as the SDK: a frozen or partitioned coordinator ends the session in
    # seconds (not the 20 s keepalive / 60 s ping defaults of gRPC), and the worker reconnects.
    *CLIENT_KEEPALIVE_OPTIONS,
]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one worker presents itself and runs tasks."""

    #: Coordinator addresses, tried in turn until one accepts.
    coordinators: tuple[str, ...]
    #: Human-friendly name shown in ``xpipe workers``.
    name: str = field(default_factory=socket.gethostname)
    #: Tasks run at once.
    slots: int = 1
    #: Modules imported at start (they may register ``@xpipe.handler`` functions).
    imports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    resources: pb.Resources | None = None
    #: "process" (isolated subprocesses, the default) or "thread".
    executor: str = "process"
    #: Run cloudpickled code sent by clients; turn off to run only importable code.
    allow_pickled: bool = True
    #: Kinds of code this worker runs (``--allow-code``; see ``xpipe.security._codetrust``);
    #: ``allow_pickled=False`` takes "pickle" out of them.
    allowed_code: frozenset[str] = frozenset(CODE_KINDS)

    @property
    def code_kinds(self) -> frozenset[str]:
        """The kinds this worker runs, ``allow_pickled`` applied."""
        return self.allowed_code if self.allow_pickled else self.allowed_code - {"pickle"}
    #: On SIGTERM or drain, how long running tasks may take to finish before they are requeued.
    grace_s: float = 30.0
    #: Stable id across reconnects; generated when empty.
    worker_id: str = ""
    #: Longest wait between reconnect attempts.
    max_backoff_s: float = 2.0
    #: Where big results go; empty: the directory the coordinator names on registration.
    artifact_dir: str = ""
    #: Memory limit of tasks that declare none, in bytes; 0: only declared limits apply.
    task_memory_limit_bytes: int = 0
    #: Install packages with pip when asked (``install_missing_dependencies``); off: refuse.
    allow_install: bool = False
    #: Where installed packages go (on tasks' ``sys.path``); empty: :func:`default_install_dir`.
    install_dir: str = ""
    #: Where the spans of traced attempts go (``--otlp-endpoint``); None: tracing off.
    tracing: TracingConfig | None = None
    #: Output kept per attempt (stdout and stderr together), in bytes; past it a marker
    #: counts what was dropped (``--task-log-max-bytes``).
    task_log_max_bytes: int = TASK_LOG_MAX_BYTES
    #: TLS to the coordinators (``--tls-ca/--tls-cert/--tls-key`` or ``XPIPE_TLS_*``); None: plaintext.
    tls: TLSConfig | None = None
    #: Sent as ``authorization`` when the stream opens (``--token`` or ``XPIPE_TOKEN``); None: none.
    token: str | None = None
    #: Where per-worker disk cache levels live (``--cache-dir``); empty: :func:`default_cache_dir`.
    cache_dir: str = ""


def detect_resources() -> pb.Resources:
    """What this machine offers: logical cores, total memory, and NVIDIA GPUs if any."""
    gpus = 0
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5).stdout
            gpus = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            log.warning("nvidia-smi failed; assuming no GPU", exc_info=True)
    return pb.Resources(cpu_cores=psutil.cpu_count() or 1, memory_bytes=psutil.virtual_memory().total, gpu=gpus)


class EncryptionMismatch(Exception):
    """This worker and its coordinator disagree on encryption at rest; the worker must stop."""


def check_encryption(address: str, coordinator_seals: bool, crypt: AtRest | None) -> None:
    """Refuse a coordinator that encrypts at rest when this worker has no keyring, or the reverse.

    Either way artifacts would be written that the other side cannot read (or written in
    the clear where they must not be): better to stop at once, saying why.

    Raises:
        EncryptionMismatch: naming which side has the keyring and what to do.
    """
    if coordinator_seals and crypt is None:
        raise EncryptionMismatch(
            f"coordinator {address} encrypts data at rest but this worker has no --encryption-key-file: "
            "it could neither open the sealed artifacts it reads nor seal those it writes; "
            "start it with the coordinator's keyring"
        )
    if not coordinator_seals and crypt is not None:
        raise EncryptionMismatch(
            f"this worker has --encryption-key-file {crypt.path} but coordinator {address} does not encrypt "
            "at rest: it could not read the sealed artifacts this worker writes; give the coordinator the "
            "keyring too, or start the worker without the flag"
        )


class WorkerDaemon:
    """Connects, registers, heartbeats, runs assignments, reconnects; see module docs."""

    def __init__(self, config: WorkerConfig):
        if not config.coordinators:
            raise ValueError("a worker needs at least one coordinator address")
        if config.slots < 1:
            raise ValueError(f"slots must be at least 1, got {config.slots}")
        self.config = config
        self.worker_id = config.worker_id or f"{config.name}-{uuid.uuid4().hex[:8]}"
        self.resources = config.resources or detect_resources()
        self._executor: TaskExecutor | None = None
        self._handlers: list[str] = []
        self._code: dict[str, bytes] = {}
        # Which assignments may run at all (kinds, signed principals); see ``_codegate``.
        self._gate = CodeGate(config.code_kinds)
        # What it holds, what may start, what it owes: the pure core (see ``_state``).
        self._state = WorkerState(config.slots, self.resources)
        # Every background task (attempts, cancels, shutdown) is tracked and awaited on exit.
        self._tasks: set[asyncio.Task] = set()
        self._shutting_down: asyncio.Task | None = None
        # Attempts the core started, for the slot runners (one per slot: cheaper than a task
        # per attempt); None ends a runner.
        self._starts: asyncio.Queue[core.Start | None] = asyncio.Queue()
        self._pending_events: list[worker_pb2.TaskEvent] = []
        self._pending_since = 0.0  # when the oldest unsent event was made (monotonic)
        self._artifact_dir = config.artifact_dir  # the coordinator's, once registered
        self._wake = asyncio.Event()  # something to send: a message or task events
        self._send: asyncio.Queue[worker_pb2.WorkerMessage | None] | None = None
        self._stop = asyncio.Event()
        #: Shutting down: the stream was half-closed; do not reconnect when it ends.
        self._closing = False
        self._stream_closed = asyncio.Event()  # set when a session ends after _closing
        self._idle = asyncio.Event()
        self._idle.set()
        self.heartbeat_interval_s = 1.0
        #: Set when the coordinator changes the interval (HeartbeatSettings): the wait re-aims.
        self._pace_changed = asyncio.Event()
        #: Skips a heartbeat that outcomes just sent made redundant (see core.HeartbeatGate).
        self.heartbeats = core.HeartbeatGate()
        #: The heartbeat's last psutil sample (None before the first): the metrics read it.
        self.last_sample: worker_pb2.WorkerMetrics | None = None
        self.connected = asyncio.Event()
        # HA: the leader a follower named (connect there next), and whether one answered so.
        self._leader_hint = ""
        self._told_not_leader = False
        # Captured task output waiting for the stream (see ``_tasklogs``), and the timer
        # that wakes the stream when some has waited long enough.
        self._logs = TaskLogBuffer(config.task_log_max_bytes)
        #: Assignments received on the current stream; heartbeats carry it (Heartbeat.assignments_received).
        self._received = 0
        self._log_timer: asyncio.TimerHandle | None = None
        #: The newest checkpoint save of each attempt, held while no stream is up.
        self._held_checkpoints: dict[tuple[str, str, int], worker_pb2.CheckpointSave] = {}
        #: The result cache's levels and counts (docs/cache.md); used by cached tasks only.
        self.cache = WorkerCache(config.cache_dir or default_cache_dir(config.name))
        self._installer = PipInstaller(config.install_dir or default_install_dir(config.name), allowed=config.allow_install)

    @property
    def tasks_done(self) -> int:
        """Attempts run to an outcome that was reported (not given back)."""
        return self._state.finished

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until :meth:`shutdown` (or SIGTERM through ``_main``) completes."""
        for module in self.config.imports:
            importlib.import_module(module)  # fail fast, in the parent, on a bad --import
        self._handlers = handler_names()
        self._installer.prepare()  # before the children start: they inherit sys.path
        # Executor children are spawned before any gRPC channel exists (gRPC and fork do not mix).
        self._executor = make_executor(
            self.config.executor, self.config.slots, imports=self.config.imports, allow_pickled="pickle" in self.config.code_kinds,
            memory_limit_bytes=self.config.task_memory_limit_bytes, tracing=self.config.tracing,
            worker_name=self.config.name,
        )  # fmt: skip
        self._executor.set_artifact_root(self._artifact_dir)
        self._executor.set_log_sink(self._log_output)
        self._executor.set_checkpoint_sink(self._checkpoint_out)
        await self._executor.start()
        default = self.config.task_memory_limit_bytes
        log.info(
            "task memory limits: enforced by %s; tasks that declare no memory: %s",
            self._executor.memory_enforcement,
            f"limited to {default} bytes (--task-memory-limit)" if default else "no limit (--task-memory-limit unset)",
        )
        for i in range(self.config.slots):
            self._track(self._runner(), f"xpipe-slot-{i}")
        try:
            await self._connect_loop()
        finally:
            # Last step of the ordered shutdown: the stream is closed; end what is left.
            # (The shutdown task, if any, set _stop as its last step: it ends by itself.)
            for task in self._tasks:
                if task is not self._shutting_down:
                    task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("worker task failed", exc_info=result)
            await self._executor.stop(grace_s=0)
            self.cache.close()
            if self._log_timer is not None:
                self._log_timer.cancel()
            log.info(self._state.counts().line(unsent=len(self._pending_events)))

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking work, give back queued attempts, let running ones finish, then exit.

        One ordered shutdown, however it was asked for (SIGTERM, the coordinator's Drain,
        or both): stop taking work and give back what is queued; wait up to ``grace_s`` for
        running attempts; give back and stop those still going (the coordinator requeues
        them elsewhere: nothing is lost); flush the outcomes; then close the stream. A
        second call waits for the first.
        """
        if self._shutting_down is None:
            grace = self.config.grace_s if grace_s is None else grace_s
            self._shutting_down = self._track(self._shutdown(grace), "xpipe-shutdown")
        await asyncio.shield(self._shutting_down)

    async def _shutdown(self, grace_s: float) -> None:
        log.info("draining: no new work; %d attempts running", len(self._state.running))
        notifier().stopping(f"draining: {len(self._state.running)} attempts running, grace {grace_s:g}s")
        self._handle(core.DrainRequested(time.monotonic()))
        self._heartbeat_now()
        try:
            await asyncio.wait_for(self._wait_idle(), timeout=grace_s)
        except TimeoutError:
            log.warning("grace of %.1fs over; giving back %d running attempts", grace_s, len(self._state.running))
            self._handle(core.GraceExpired(time.monotonic()))
            await asyncio.gather(*[t for t in self._tasks if t.get_name() == "xpipe-cancel"], return_exceptions=True)
        deadline = time.monotonic() + SHUTDOWN_FLUSH_S
        await self._flush_events(timeout_s=SHUTDOWN_FLUSH_S)
        await self._close_stream(timeout_s=max(0.0, deadline - time.monotonic()))
        self._stop.set()

    async def _close_stream(self, timeout_s: float) -> None:
        """Half-close the stream and wait for the coordinator to end the call.

        A message handed to gRPC may still be on its way: cancelling the call at once
        (RST_STREAM) could drop the last outcomes, and the coordinator would requeue work
        that had finished. Ending the requests instead lets the coordinator read all that
        was sent, then end the call; only a coordinator that does not, within
        ``timeout_s``, has the call cancelled (by ``_stop``).
        """
        send = self._send
        if send is None:
            return  # no stream: what is unsent stays held (and is logged as unsent)
        self._closing = True
        self._put(send, None)
        try:
            await asyncio.wait_for(self._stream_closed.wait(), timeout_s)
        except TimeoutError:
            log.warning("the coordinator did not close the stream within %.1fs; cancelling it", timeout_s)

    async def _wait_idle(self) -> None:
        while not self._state.idle:
            self._idle.clear()
            await self._idle.wait()

    def _track(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ connection

    async def _connect_loop(self) -> None:
        """Keep a session with some coordinator until stopped; a worker never gives up.

        A leader named by a follower is tried at once (a few times in a row at most);
        otherwise the next address, after a wait from :class:`Backoff`, so a dead
        coordinator costs a few connection attempts a second at most.
        """
        backoff = Backoff(initial_s=0.05, max_s=self.config.max_backoff_s)
        addresses = list(self.config.coordinators)
        i = 0
        hops = 0  # consecutive jumps to a leader named by a follower
        while not self._stop.is_set():
            hint, self._leader_hint = self._leader_hint, ""
            if hint and hops < 3:
                address, hops = hint, hops + 1
            else:
                address, hops = addresses[i % len(addresses)], 0
                i += 1
            started = time.monotonic()
            if not self._stop.is_set() and self._shutting_down is None:
                notifier().status(f"connecting to {address}")
            try:
                await self._session(address)
            except EncryptionMismatch as exc:
                log.error("%s", exc)
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("coordinator %s refused this worker: %s", address, exc.details())
                    raise
                if exc.code() in REFUSED_CODES:
                    log.error("coordinator %s refused this worker's credential (%s: %s); exiting: give it a "
                              "worker certificate or a token with role worker (--token, --tls-cert)",
                              address, exc.code().name, exc.details())  # fmt: skip
                    raise
                log.info("stream to %s ended: %s %s", address, exc.code().name, exc.details())
            except Exception:
                log.exception("stream to %s failed", address)
            self.connected.clear()
            if self._stop.is_set() or self._closing:
                break
            if self._leader_hint and hops < 3:
                continue  # a follower named the leader: connect there now
            if time.monotonic() - started > _HEALTHY_SESSION_S:
                backoff.reset()  # it served us for a while: this break is news, retry soon
            delay_s = backoff.next_delay()
            if self._told_not_leader:
                # A live member answered while a leader is being elected: look again soon.
                delay_s = min(delay_s, _ELECTION_POLL_S)
            self._told_not_leader = False
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay_s)
            except TimeoutError:
                pass

    async def _session(self, address: str) -> None:
        send: asyncio.Queue[worker_pb2.WorkerMessage | None] = asyncio.Queue()
        send.put_nowait(worker_pb2.WorkerMessage(register=self._register_message()))

        async def outgoing():
            # Task events are taken only when the stream can write again, so whatever
            # finished during the previous write rides in one batch.
            while True:
                if not send.empty():
                    message = send.get_nowait()
                    if message is None:
                        return
                    yield message
                elif self._pending_events and self._send is send:
                    # With more of its work queued here, linger a moment so outcomes leave in
                    # batches; with none queued, send now (latency matters more then).
                    linger_s = self._pending_since + EVENT_LINGER_S - time.monotonic()
                    if self._state.queue and len(self._pending_events) < EVENT_BATCH_MAX and linger_s > 0:
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), linger_s)
                        except TimeoutError:
                            pass
                        continue
                    events, self._pending_events = self._pending_events, []
                    self._remember(events)
                    yield worker_pb2.WorkerMessage(events=worker_pb2.TaskEventBatch(events=events))
                elif self._send is send and self._logs.due(time.monotonic()):
                    # Logs go after outcomes and control messages, in pieces the stream
                    # writes one at a time: a flood never holds up an outcome.
                    batch = self._logs.take()
                    if batch is not None:
                        yield worker_pb2.WorkerMessage(task_logs=batch)
                else:
                    self._wake.clear()
                    await self._wake.wait()

        tls = self.config.tls
        if tls is None:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        else:
            options = [*_CHANNEL_OPTIONS, *tls.channel_options()]
            channel = grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
        token = self.config.token
        metadata = ((AUTHORIZATION_KEY, authorization_value(token)),) if token else None
        async with channel:
            self._received = 0  # assignments received on this stream (its heartbeats say how many)
            call = channel.stream_stream(
                _CONNECT_METHOD,
                request_serializer=worker_pb2.WorkerMessage.SerializeToString,
                response_deserializer=worker_pb2.CoordinatorMessageView.FromString,
            )(outgoing(), metadata=metadata)
            background: list[asyncio.Task] = []
            try:
                async for message in call:
                    body = message.WhichOneof("body")
                    if body == "assignments":
                        self._received += len(message.assignments.assignments)
                        self._accept(message.assignments)
                    elif body == "registered":
                        reg = message.registered
                        check_encryption(address, reg.encryption_at_rest, at_rest())
                        self.heartbeat_interval_s = reg.heartbeat_interval_s or 1.0
                        self._artifact_dir = self.config.artifact_dir or reg.artifact_dir
                        self._gate.trust(reg.signing_key, reg.signing_key_id)
                        self._executor.set_artifact_root(self._artifact_dir)
                        self._send = send
                        self.connected.set()
                        log.info("registered with coordinator %s at %s", reg.coordinator_id, address)
                        if self._shutting_down is None:  # READY again on a reconnect: systemd ignores repeats
                            notifier().ready(f"registered with {address} ({self.config.slots} slots)")
                        self._wake.set()  # events held while disconnected go out now
                        held, self._held_checkpoints = self._held_checkpoints, {}
                        for save in held.values():
                            self._put(send, worker_pb2.WorkerMessage(checkpoint=save))
                        background = [
                            asyncio.create_task(self._heartbeats(send)),
                            asyncio.create_task(self._stop_watch(call)),
                        ]
                    elif body == "heartbeat_settings":
                        # The fleet grew or shrank (--max-heartbeats-per-s): beat at the new pace now.
                        self.heartbeat_interval_s = message.heartbeat_settings.interval_s or self.heartbeat_interval_s
                        self._pace_changed.set()
                        log.info("heartbeat interval now %.3g s (timeout %.3g s)", self.heartbeat_interval_s,
                                 message.heartbeat_settings.timeout_s)  # fmt: skip
                    elif body == "cancel":
                        now = time.monotonic()
                        for ref in message.cancel.attempts:
                            self._handle(core.CancelRequested(now, (ref.run_id, ref.task, ref.attempt)))
                    elif body == "drain":
                        if self._shutting_down is None:
                            self._shutting_down = self._track(self._shutdown(self.config.grace_s), "xpipe-shutdown")
                    elif body == "install":
                        self._track(self._install(message.install, send), "xpipe-install")
                    elif body == "reset":
                        log.info("coordinator %s reset this worker: %s", address, message.reset.reason)
                        return
                    elif body == "not_leader":
                        leader = message.not_leader.leader_address
                        log.info("%s is not the leader (leader: %s)", address, leader or "not elected yet")
                        self._told_not_leader = True
                        self._leader_hint = leader if leader != address else ""
                        return
                if self._closing:
                    log.info("stream closed by the coordinator after the last outcomes")
            except asyncio.CancelledError:
                if not self._stop.is_set():
                    raise
                # _stop_watch cancelled the call: a clean shutdown, not an error.
            finally:
                if self._closing:
                    self._stream_closed.set()
                self._send = None
                self._put(send, None)
                for task in background:
                    task.cancel()
                results = await asyncio.gather(*background, return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        log.error("worker background task failed", exc_info=result)

    async def _install(self, request: worker_pb2.InstallPackages, send: asyncio.Queue) -> None:
        """Run pip (or refuse), answer on the stream that asked, then let new tasks see the packages."""
        outcome = await self._installer.install(list(request.packages), request.timeout_s)
        log.info("install %s: %s %s", list(request.packages)[:8], outcome.status, outcome.message)
        if outcome.status == INSTALLED and self._executor is not None:
            self._executor.refresh_imports()
        if self._send is send:  # the stream that asked is still open (else the coordinator answered "no answer")
            self._put(send, worker_pb2.WorkerMessage(install_result=worker_pb2.InstallResult(
                request_id=request.request_id, status=outcome.status, message=outcome.message[:MAX_TEXT_CHARS],
                output_tail=outcome.output_tail,
            )))  # fmt: skip

    async def _stop_watch(self, call) -> None:
        await self._stop.wait()
        call.cancel()

    def _register_message(self) -> worker_pb2.Register:
        return worker_pb2.Register(
            worker_id=self.worker_id,
            name=self.config.name,
            host=socket.gethostname(),
            slots=self.config.slots,
            resources=self.resources,
            labels=self.config.labels,
            handlers=self._handlers,
            running=[_ref(k) for k in self._state.held],
            accepts_pickled_code="pickle" in self.config.code_kinds,
            allowed_code=[k for k in CODE_KINDS if k in self.config.code_kinds],
            recent=self._state.recent_outcomes(),
            memory_enforcement=self._executor.memory_enforcement if self._executor is not None else "",
        )

    @property
    def slots_busy(self) -> int:
        """Slots running an attempt now."""
        return len(self._state.running)

    async def _heartbeats(self, send: asyncio.Queue) -> None:
        proc = psutil.Process()
        proc.cpu_percent()
        while True:
            beat_at = time.monotonic()
            if not self.heartbeats.due(beat_at, self.heartbeat_interval_s):
                await self._until_next_heartbeat(beat_at)
                continue
            mem = psutil.virtual_memory()
            self.last_sample = sample = worker_pb2.WorkerMetrics(
                cpu_percent=psutil.cpu_percent(),
                memory_percent=mem.percent,
                memory_used_bytes=mem.total - mem.available,
                load_1m=os.getloadavg()[0],
            )
            self._put(send, 
                worker_pb2.WorkerMessage(
                    heartbeat=worker_pb2.Heartbeat(
                        metrics=sample,
                        running=[_ref(k) for k in self._state.held],
                        draining=self._state.draining,
                        assignments_received=self._received,
                    )
                )
            )
            await self._until_next_heartbeat(beat_at)

    async def _until_next_heartbeat(self, sent_at: float) -> None:
        """Wait one interval after ``sent_at``; a new interval meanwhile re-aims the wait, from the same start."""
        while True:
            self._pace_changed.clear()
            delay_s = sent_at + self.heartbeat_interval_s - time.monotonic()
            if delay_s <= 0:
                return
            try:
                await asyncio.wait_for(self._pace_changed.wait(), delay_s)
            except TimeoutError:
                return

    def _heartbeat_now(self) -> None:
        if self._send is not None:
            self._put(
                self._send,
                worker_pb2.WorkerMessage(
                    heartbeat=worker_pb2.Heartbeat(
                        running=[_ref(k) for k in self._state.held], draining=True, assignments_received=self._received
                    )
                ),
            )

    async def _flush_events(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (self._pending_events or self._logs.due(time.monotonic())) and time.monotonic() < deadline:
            if self._send is None:
                await asyncio.sleep(0.05)
                continue
            self._wake.set()
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ tasks

    def _accept(self, batch: worker_pb2.AssignmentBatchView) -> None:
        for blob in batch.code:
            self._code[blob.code_hash] = blob.data
        offers = []
        check = self._gate.check
        for encoded in batch.assignments:
            # Only the head is read here; the executor child parses the rest from the bytes.
            head = _parse_head(encoded)
            try:
                check(head)
            except Refused as exc:  # never reaches an executor: the code is not loaded
                key = _key(head.attempt)
                log.warning("refused attempt %s: %s", key, exc, extra=log_ids(key))
                self._emit(failed_event(head.attempt, exc.error_type, str(exc), non_retryable=True))
                continue
            offers.append(core.Offer(_key(head.attempt), task_request(head.task.resources), (head, encoded)))
        self._handle(core.AssignmentsReceived(time.monotonic(), tuple(offers)))

    def _handle(self, event) -> None:
        """Feed the core one event and carry out its actions (the only place they are)."""
        for action in self._state.handle(event):
            kind = type(action)
            if kind is core.Start:
                self._starts.put_nowait(action)
            elif kind is core.Report:
                self._emit(action.outcome)
            elif kind is core.GiveBack:
                self._emit(_released(action.key, action.reason))
            elif kind is core.CancelQueued:
                self._emit(_failed(action.key, "CANCELLED", "cancelled before it started"))
            elif kind is core.StopRunning:
                self._track(self._executor.cancel(action.key), "xpipe-cancel")
            else:
                raise AssertionError(f"unhandled worker action {action!r}")
        if self._state.idle:
            self._idle.set()

    async def _runner(self) -> None:
        while (start := await self._starts.get()) is not None:
            await self._run_one(start.key, *start.payload)

    async def _run_one(self, key: tuple[str, str, int], head: worker_pb2.AssignmentHead, encoded: bytes) -> None:
        executor = self._executor
        started = time.time()
        # Short tasks report start and end in one event; a task still running after
        # STARTED_REPORT_DELAY_S reports its start on its own, so RUNNING shows up.
        started_report = asyncio.get_running_loop().call_later(STARTED_REPORT_DELAY_S, self._emit_started, key, started)
        spec = head.task
        code_hash = spec.python.code_hash
        pii: tuple[str, ...] = ()
        if spec.pii_fields:  # a privacy-marked task: its log lines are scrubbed (see _tasklogs.protect)
            pii = tuple(spec.pii_fields)
            self._logs.protect(key, pii, pii_values_of(pii, spec.args, *head.upstream))
        cached = spec.HasField("cache")  # the result cache (docs/cache.md); most tasks skip it
        event = None
        try:
            if cached:
                entry, event, cache_warnings = await self.cache.lookup(key, head, self._artifact_dir or None)
            if event is None:
                event = await executor.run(head, self._code.get(code_hash) if code_hash else None, encoded=encoded)
                if cached and entry:
                    cache_warnings += await self.cache.store(key, head, entry, event, self._artifact_dir or None)
                if cached and cache_warnings:
                    event.telemetry.warnings.extend(cache_warnings)
        except Exception as exc:
            log.exception("executor failed on %s", key, extra=log_ids(key))
            event = _failed(key, "TASK_FAILURE", f"executor error: {type(exc).__name__}: {exc}")
        finally:
            started_report.cancel()
            self._logs.end(key)  # its output is complete: the stream sends it after the outcome
        if pii and event.WhichOneof("kind") == "succeeded":  # before the stream takes the last output
            self._logs.protect(key, pii, pii_values_of(pii, event.succeeded.result.SerializeToString()))
        elif pii and event.WhichOneof("kind") == "failed":  # its message and output tail are shown too
            self._logs.scrub_error(key, event.failed.error)
        if key not in self._state.running:
            return  # given back at shutdown: the coordinator requeues it, do not report twice
        if (
            event.WhichOneof("kind") == "succeeded" and len(event.succeeded.result.data) >= ARTIFACT_MIN_BYTES
            and event.succeeded.result.codec != pb.CODEC_MAP_PARTS  # a fan-out's split: the coordinator reads it
        ):  # fmt: skip
            await self._spill(key, event.succeeded.result)
        event.started_at = started
        self._handle(core.AttemptEnded(time.monotonic(), key, event))

    async def _spill(self, key: tuple[str, str, int], result: pb.Payload) -> None:
        """Move a big result into the artifact directory; it then travels as a reference.

        The executor child normally wrote it already (``_objects``); this is the fallback
        for a result it could not write. If the directory cannot be written here either,
        the result stays inline (slower, still correct).
        """
        # The directory must already exist here: on a machine that does not share the
        # coordinator's directory it is absent, and the result then travels inline.
        if not self._artifact_dir or not os.path.isdir(self._artifact_dir):
            return
        try:
            ref = await asyncio.to_thread(write_artifact, self._artifact_dir, key, result.data)
        except OSError as exc:
            log.warning("cannot write artifact %s (%s); sending the result inline",
                        artifact_path(self._artifact_dir, *key), exc)  # fmt: skip
            return
        await asyncio.to_thread(by_reference, result, ref)  # hashing is a big read: off the loop

    def _remember(self, events: list[worker_pb2.TaskEvent]) -> None:
        """Keep sent outcomes, to send again on the next Register (see ``Register.recent``)."""
        outcomes = tuple((_key(e.attempt), e) for e in events if e.WhichOneof("kind") != "started")
        if outcomes:
            now = time.monotonic()
            self._state.handle(core.OutcomesSent(now, outcomes))
            if any(e.WhichOneof("kind") in _RESULT_KINDS for _, e in outcomes):
                self.heartbeats.results_sent(now)

    def _put(self, send: asyncio.Queue, message: worker_pb2.WorkerMessage | None) -> None:
        send.put_nowait(message)
        self._wake.set()

    def _log_output(self, key: tuple[str, str, int], stream: int, data: bytes) -> None:
        """The executors' log sink: keep the bytes; wake the stream when they have waited enough."""
        now = time.monotonic()
        self._logs.add(key, stream, data, now)
        if self._log_timer is None:
            wait_s = self._logs.wait_s(now)
            if wait_s is not None:
                self._log_timer = asyncio.get_running_loop().call_later(wait_s, self._logs_due)

    def _checkpoint_out(self, key: tuple[str, str, int], data: bytes) -> None:
        """The executors' checkpoint sink: send the save now, or hold the newest per attempt
        while disconnected (sent on registering again, if the attempt still runs)."""
        try:
            save = worker_pb2.CheckpointSave.FromString(data)
        except DecodeError as exc:  # written by our own runner: a bug, or a task scribbling on its pipe
            log.warning("dropped a malformed checkpoint of %s: %s", key, exc)
            return
        save.attempt.CopyFrom(_ref(key))  # the attempt the executor runs, whatever the bytes said
        if self._send is not None:
            self._put(self._send, worker_pb2.WorkerMessage(checkpoint=save))
        elif key in self._state.running:
            self._held_checkpoints[key] = save

    def _logs_due(self) -> None:
        self._log_timer = None
        self._wake.set()

    def _emit_started(self, key: tuple[str, str, int], at: float) -> None:
        if key in self._state.running:
            self._emit(worker_pb2.TaskEvent(attempt=_ref(key), at=at, started=worker_pb2.Started()))

    def _emit(self, event: worker_pb2.TaskEvent) -> None:
        if not self._pending_events:
            self._pending_since = time.monotonic()
        self._pending_events.append(event)
        self._wake.set()


def _key(ref: worker_pb2.AttemptRef) -> tuple[str, str, int]:
    return (ref.run_id, ref.task, ref.attempt)


def _ref(key: tuple[str, str, int]) -> worker_pb2.AttemptRef:
    return worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])


def _failed(key: tuple[str, str, int], error_type: str, message: str) -> worker_pb2.TaskEvent:
    return worker_pb2.TaskEvent(
        attempt=_ref(key), at=time.time(), failed=worker_pb2.Failed(error=task_error(error_type, message))
    )


def _released(key: tuple[str, str, int], reason: str) -> worker_pb2.TaskEvent:
    return worker_pb2.TaskEvent(attempt=_ref(key), at=time.time(), released=worker_pb2.Released(reason=reason))


def parse_kv(text: str, what: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` (for ``--labels`` and ``--resources``); names the bad item.

    The coordinator's limits apply here already: a worker it would refuse should not start.
    """
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"bad {what} item {item!r}: expected key=value")
        if len(key) > MAX_NAME_CHARS or len(value) > MAX_LABEL_VALUE_CHARS:
            raise ValueError(
                f"bad {what} item {item[:80]!r}: keys may have {MAX_NAME_CHARS} chars, values {MAX_LABEL_VALUE_CHARS}"
            )
        out[key] = value
    if len(out) > MAX_LABELS:
        raise ValueError(f"{what} has {len(out)} items; the limit is {MAX_LABELS}")
    return out


def parse_resources(text: str, base: pb.Resources) -> pb.Resources:
    """Override detected resources with ``cpu=4,memory=16Gi,gpu=1,<custom>=N``.

    The keys are those of ``Task(resource_requirements=...)`` (:data:`xpipe._limits.RESOURCE_ALIASES`:
    ``cpu``/``cpu_cores``, ``memory``/``memory_mb``/``memory_gb``, ``gpu``), so one spelling
    works on both sides.

    Raises:
        ValueError: naming ``--resources`` and the bad item (not a number, NaN, infinite,
            negative, too large, or one resource given twice).
    """
    try:
        amounts = normalize_resources(parse_kv(text, "--resources"), text=True)
    except ValueError as exc:
        raise ValueError(f"bad --resources {text!r}: {exc}") from None
    res = pb.Resources()
    res.CopyFrom(base)
    if amounts.cpu_cores is not None:
        res.cpu_cores = amounts.cpu_cores
    if amounts.memory_bytes is not None:
        res.memory_bytes = amounts.memory_bytes
    if amounts.gpu is not None:
        res.gpu = amounts.gpu
    res.custom.update(amounts.custom)
    return res
