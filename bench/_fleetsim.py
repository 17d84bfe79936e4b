"""One process of the fleet simulator: many ``WorkerService.Connect`` streams on one asyncio loop.

Started by :mod:`bench.fleet` (``python -m bench._fleetsim --coordinator ADDR --prefix sim0
--count 2500``), it holds ``count`` simulated workers. Each is a real protocol client of the
real coordinator, speaking the same wire format as ``xpipe-worker`` (``worker/_daemon.py``):

* it sends ``Register`` and, once ``Registered`` arrives, a ``Heartbeat`` every
  ``heartbeat_interval_s`` the coordinator named, listing what it holds (nothing: see next),
  skipping one due within an interval of sending outcomes, never two in a row, as
  ``xpipe-worker`` does (``HeartbeatGate``; ``--no-heartbeat-skip`` beats every interval);
* every ``AssignmentBatch`` is answered at once with one ``TaskEventBatch`` holding a
  ``Succeeded`` (result: pickled ``None``, as ``bench.tasks.noop`` returns) per assignment.
  Like the real worker, a task quicker than ``STARTED_REPORT_DELAY_S`` sends no separate
  ``Started``: ``started_at`` rides on the outcome. The coordinator never sends more than
  ``slots + prefetch``, and an instant task frees its slot at once, so prefetch is honoured
  by construction;
* ``HeartbeatSettings`` (the coordinator stretching or shortening the fleet's interval,
  ``--max-heartbeats-per-s``) changes the pace at once, as ``xpipe-worker`` does;
* ``Cancel`` is ignored (nothing is ever held when it arrives), ``Drain`` is answered by a
  draining heartbeat and a clean end of the stream, ``Reset`` and ``NotLeader`` by
  registering again, as the real worker does.

The driver talks to this process by lines on stdin (commands) and stdout (one JSON object per
answer); logs go to stderr. Commands: ``connect [RATE_PER_S]``, ``stats``, ``cut K`` (end K streams at once
without a goodbye: the call is cancelled, an RST_STREAM, as when a worker's host dies), and
``stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time

import grpc
import psutil
from xpipe._backoff import Backoff
from xpipe._limits import CLIENT_KEEPALIVE_OPTIONS, MAX_MESSAGE_BYTES
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.worker._state import HeartbeatGate

log = logging.getLogger(__name__)

_CONNECT_METHOD = "/xpipe.v1.WorkerService/Connect"
#: What ``bench.tasks.noop`` returns, pickled (protocol 5), as a real worker would send it.
_NONE_RESULT = pb.Payload(codec=pb.CODEC_PICKLE, data=b"\x80\x05N.", size_bytes=4)
_METRICS = worker_pb2.WorkerMetrics(cpu_percent=5.0, memory_percent=20.0, memory_used_bytes=2**30, load_1m=0.1)
_RESOURCES = pb.Resources(cpu_cores=4, memory_bytes=8 * 2**30)
_parse_head = worker_pb2.AssignmentHead.FromString
#: As in worker/_daemon.py: after a session this long, reconnecting starts from the shortest wait.
_HEALTHY_SESSION_S = 5.0
#: With a connect rate, workers start in groups of this many.
_CONNECT_CHUNK = 20


class SimWorker:
    """One simulated worker: a stream, its heartbeats, instant no-op outcomes."""

    def __init__(self, sim: Simulator, index: int, channel: grpc.aio.Channel):
        self.sim = sim
        self.name = f"{sim.prefix}-{index}"
        self.worker_id = self.name
        self.channel = channel
        self.call = None
        self.cut = False
        self.registered_at = 0.0
        self._send: asyncio.Queue[worker_pb2.WorkerMessage | None] | None = None
        self.interval_s = 1.0
        self.beat_at = 0.0  # monotonic time of the last heartbeat
        # As xpipe-worker: a heartbeat due within an interval of sending outcomes is skipped.
        self.gate = HeartbeatGate()

    async def run(self) -> None:
        """Keep a session until cut or stopped; register again after Reset/NotLeader or a broken stream."""
        # The same waits between attempts as xpipe-worker's connect loop (worker/_daemon.py).
        backoff = Backoff(initial_s=0.05, max_s=2.0)
        while not self.cut and not self.sim.stopping:
            started = time.monotonic()
            why = "ended"
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                if self.cut or self.sim.stopping:
                    return
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("worker %s refused: %s", self.name, exc.details())
                    self.sim.errors += 1
                    return
                why = exc.code().name
                log.info("stream of %s ended: %s %s", self.name, why, exc.details())
            except asyncio.CancelledError:
                return
            if not (self.cut or self.sim.stopping):
                self.sim.reconnects[why] = self.sim.reconnects.get(why, 0) + 1
                if time.monotonic() - started > _HEALTHY_SESSION_S:
                    backoff.reset()
                await asyncio.sleep(backoff.next_delay())

    async def _session(self) -> None:
        send: asyncio.Queue[worker_pb2.WorkerMessage | None] = asyncio.Queue()
        send.put_nowait(worker_pb2.WorkerMessage(register=worker_pb2.Register(
            worker_id=self.worker_id, name=self.name, host=self.sim.host, slots=self.sim.slots,
            resources=_RESOURCES, accepts_pickled_code=True, memory_enforcement="none",
        )))  # fmt: skip

        async def outgoing():
            while True:
                message = await send.get()
                if message is None:
                    return
                yield message

        self.call = call = self.channel.stream_stream(
            _CONNECT_METHOD,
            request_serializer=worker_pb2.WorkerMessage.SerializeToString,
            response_deserializer=worker_pb2.CoordinatorMessageView.FromString,
        )(outgoing())
        heartbeats: asyncio.Task | None = None
        self.received = 0  # assignments received on this stream, as a real worker counts them
        self.beat_at = 0.0
        try:
            async for message in call:
                body = message.WhichOneof("body")
                if body == "assignments":
                    self.received += len(message.assignments.assignments)
                    self.sim.assignment_messages += 1
                    now = time.time()
                    events = [
                        worker_pb2.TaskEvent(attempt=_parse_head(raw).attempt, succeeded=worker_pb2.Succeeded(result=_NONE_RESULT),
                                             at=now, started_at=now)
                        for raw in message.assignments.assignments
                    ]  # fmt: skip
                    self.sim.done += len(events)
                    send.put_nowait(worker_pb2.WorkerMessage(events=worker_pb2.TaskEventBatch(events=events)))
                    if self.sim.skip_heartbeats:
                        self.gate.results_sent(time.monotonic())
                    self.sim.event_messages += 1
                elif body == "registered":
                    self.interval_s = message.registered.heartbeat_interval_s or 1.0
                    if not self.registered_at:
                        self.registered_at = time.time()
                        self.sim.on_registered()
                    if heartbeats is None:
                        heartbeats = asyncio.create_task(self._heartbeats(send))
                elif body == "heartbeat_settings":
                    self.interval_s = message.heartbeat_settings.interval_s or self.interval_s
                    self.sim.pace_changes += 1
                    if heartbeats is not None:  # re-aimed: the next beat one new interval after the last
                        heartbeats.cancel()
                        first_s = max(0.0, self.beat_at + self.interval_s - time.monotonic()) if self.beat_at else None
                        heartbeats = asyncio.create_task(self._heartbeats(send, first_s))
                elif body == "drain":
                    send.put_nowait(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat(metrics=_METRICS, draining=True)))
                    send.put_nowait(None)
                    self.cut = True  # a drained worker leaves for good
                elif body in ("reset", "not_leader"):
                    self.sim.resets += 1
                    return
                # "cancel": nothing is held by the time it arrives; "install": not simulated.
        finally:
            send.put_nowait(None)
            if heartbeats is not None:
                heartbeats.cancel()
                await asyncio.gather(heartbeats, return_exceptions=True)

    async def _heartbeats(self, send: asyncio.Queue, first_s: float | None = None) -> None:
        # A random phase, as real workers started at different times have: no thundering herd.
        await asyncio.sleep(self.interval_s * (hash(self.name) % 1000) / 1000 if first_s is None else first_s)
        while True:
            self.beat_at = now = time.monotonic()
            if self.gate.due(now, self.interval_s):  # it counts what it sends and skips
                # Everything received is answered at once, so nothing is held: the count alone.
                send.put_nowait(worker_pb2.WorkerMessage(
                    heartbeat=worker_pb2.Heartbeat(metrics=_METRICS, assignments_received=self.received)))
            await asyncio.sleep(self.interval_s)

    def cut_now(self) -> None:
        """End the stream with no goodbye (RST_STREAM), as a dead host would; never come back."""
        self.cut = True
        if self.call is not None:
            self.call.cancel()


class Simulator:
    """``count`` simulated workers of one process, and the command loop that drives them."""

    def __init__(self, coordinator: str, prefix: str, count: int, slots: int, streams_per_channel: int,
                 skip_heartbeats: bool = True):
        self.coordinator = coordinator
        self.skip_heartbeats = skip_heartbeats
        self.prefix = prefix
        self.count = count
        self.slots = slots
        self.streams_per_channel = streams_per_channel
        self.host = f"fleet-{prefix}"
        self.stopping = False
        self.done = self.errors = self.registered = self.resets = 0
        self.pace_changes = 0  # HeartbeatSettings received, all workers together
        #: Messages on the wire each way: AssignmentBatch received, TaskEventBatch sent.
        self.assignment_messages = self.event_messages = 0
        self.reconnects: dict[str, int] = {}  # why a stream ended (a gRPC status, or "ended"): count
        self.workers: list[SimWorker] = []
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task] = []
        self.connect_started = 0.0
        self._all_registered: asyncio.Event | None = None

    def on_registered(self) -> None:
        self.registered += 1
        if self.registered == self.count and self._all_registered is not None:
            self._all_registered.set()

    def _channel(self) -> grpc.aio.Channel:
        # A local subchannel pool gives each channel its own TCP connection (gRPC shares one
        # per target and options by default): N workers are N connections, as in a real fleet.
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1), *CLIENT_KEEPALIVE_OPTIONS,
        ]  # fmt: skip
        channel = grpc.aio.insecure_channel(self.coordinator, options=options)
        self.channels.append(channel)
        return channel

    async def connect(self, rate_per_s: float) -> dict:
        """Start every worker, ``rate_per_s`` a second at most (0: all at once); answer when all are registered."""
        self._all_registered = asyncio.Event()
        self.connect_started = time.time()
        channel = None
        for i in range(self.count):
            if rate_per_s > 0 and i and i % _CONNECT_CHUNK == 0:
                await asyncio.sleep(max(0.0, self.connect_started + i / rate_per_s - time.time()))
            if i % self.streams_per_channel == 0:
                channel = self._channel()
            worker = SimWorker(self, i, channel)
            self.workers.append(worker)
            self.tasks.append(asyncio.create_task(worker.run()))
        await self._all_registered.wait()
        return {"event": "registered", "count": self.registered, "first_at": self.connect_started,
                "last_at": max(w.registered_at for w in self.workers)}  # fmt: skip

    def stats(self) -> dict:
        cpu = psutil.Process().cpu_times()
        return {"event": "stats", "cpu_s": cpu.user + cpu.system, "done": self.done,
                "heartbeats": sum(w.gate.sent for w in self.workers),
                "heartbeats_skipped": sum(w.gate.skipped for w in self.workers),
                "assignment_messages": self.assignment_messages, "event_messages": self.event_messages,
                "registered": self.registered, "pace_changes": self.pace_changes, "reconnects": self.reconnects, "resets": self.resets, "errors": self.errors,
                "rss_bytes": psutil.Process().memory_info().rss, "at": time.time()}  # fmt: skip

    def cut(self, k: int) -> dict:
        victims = [w for w in self.workers if not w.cut][:k]
        for w in victims:
            w.cut_now()
        return {"event": "cut", "at": time.time(), "names": [w.name for w in victims]}

    async def stop(self) -> dict:
        self.stopping = True
        for w in self.workers:
            w.cut_now()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)
        return {"event": "stopped"}


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(opts: argparse.Namespace) -> None:
    sim = Simulator(opts.coordinator, opts.prefix, opts.count, opts.slots, opts.streams_per_channel,
                    skip_heartbeats=not opts.no_heartbeat_skip)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:  # a thread: asyncio has no portable non-blocking stdin
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read_stdin, name="fleetsim-stdin", daemon=True).start()
    _reply({"event": "ready", "pid": os.getpid()})
    background: set[asyncio.Task] = set()
    while True:
        command, _, arg = (await commands.get()).partition(" ")
        if command == "connect":
            task = asyncio.create_task(sim.connect(float(arg or 0)))
            task.add_done_callback(lambda t: _reply(t.result()) if not t.exception() else _reply({"event": "error", "error": repr(t.exception())}))
            background.add(task)
        elif command == "stats":
            _reply(sim.stats())
        elif command == "cut":
            _reply(sim.cut(int(arg)))
        elif command == "stop":
            for task in background:
                task.cancel()
            _reply(await sim.stop())
            return
        elif command:
            _reply({"event": "error", "error": f"unknown command {command!r}"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--prefix", required=True, help="worker names are PREFIX-0, PREFIX-1, ...")
    p.add_argument("--count", type=int, required=True, help="workers this process simulates")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--streams-per-channel", type=int, default=1, help="workers sharing one TCP connection")
    p.add_argument("--no-heartbeat-skip", action="store_true",
                   help="heartbeat every interval, even just after sending outcomes (xpipe-worker before 2026-11-30)")
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
