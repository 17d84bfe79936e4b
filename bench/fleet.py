"""Fleet scale: one real coordinator driven by 2, 1,000 and 10,000 simulated workers.

A script: ``python -m bench.fleet [--workers 2 1000 10000] [--tasks 20000] [--procs 4]``.

For each N, a fresh coordinator (``python -m xpipe.coordinator``, SQLite store in a temporary
directory, loopback) and ``--procs`` simulator processes (:mod:`bench._fleetsim`), each an
asyncio loop holding N/procs real ``WorkerService.Connect`` streams, one TCP connection per
worker. Measured, in this order:

* **register**: from the command to connect until the last worker got ``Registered``; then
  ``ListWorkers`` must list all N as ready;
* **idle heartbeats**: the coordinator's CPU over ``--idle-s`` while N idle workers
  heartbeat at the coordinator's interval, divided by the heartbeats sent in that window;
* **throughput**: a wide pipeline of ``--tasks`` no-op tasks submitted through the SDK
  (``PipelineManager.submit``), timed until the run's summary says succeeded; tasks/s, the
  coordinator's CPU seconds per task (also net of the idle heartbeats' CPU over the same time),
  and the simulators' CPU (to tell which side is the
  limit), the messages each way, the heartbeats sent and skipped during the run, and the
  engine turns that committed (``xpipe_store_commit_seconds_count`` from the coordinator's
  ``/metrics``). Every task must have been answered at least once; extra answers are counted, with
  the coordinator's reasons for requeueing. With ``--warm``, a run of 2 no-op tasks per
  worker goes first, so the coordinator has learnt how long tasks take, as it has in a
  long-lived fleet, and gives each worker a deep queue from its first batch;
* **lost detection**: ``--lost`` workers cut at once (streams cancelled, no goodbye); the
  time from the cut until ``ListWorkers`` shows every one of them as lost. It is bounded
  below by ``--heartbeat-timeout-s`` (the coordinator's flag, short here), stretched by
  ``--max-heartbeats-per-s`` for a big fleet, plus one tick;
* the coordinator's peak RSS over the whole sample (psutil, sampled every 20 ms).

The simulators stand in for other machines but share this one's cores with the coordinator,
and 1,000 streams cost them more CPU than 2 do. ``--sims idle`` runs them under
``SCHED_IDLE`` (their session's group at nice 19), so they use only CPU the coordinator leaves:
the nearest this machine comes to workers on hosts of their own. ``--no-heartbeat-skip``
makes the simulated workers beat every interval, as ``xpipe-worker`` did before it skipped a
beat its outcomes made redundant (``HeartbeatGate``).

Results are printed as a table and written as JSON under ``--out`` (``bench/results``).
Exit status 0 when every size ran, 1 when one failed (the JSON has the error).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench import tasks
from bench._local import free_port, nice_session, sched_idle
from bench._profile import PySpy, format_top, read_profile
from bench._report import BenchError, machine_info
from bench._xpipe import REPO_ROOT, RssSampler, XpipeCluster, _wait_terminal

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: How long the simulators may take to register every worker, and a run to finish.
_REGISTER_TIMEOUT_S = 300.0
_RUN_TIMEOUT_S = 900.0
_SIM_STOP_TIMEOUT_S = 30.0
#: How long a simulator may take to answer a command other than connect.
_ANSWER_TIMEOUT_S = 30.0


class _Sim:
    """One simulator process, driven by lines on its stdin; answers are JSON lines on stdout."""

    def __init__(self, address: str, prefix: str, count: int, log_dir: Path, env: dict[str, str], idle: bool = False,
                 skip_heartbeats: bool = True):
        self.prefix, self.count = prefix, count
        self.log_path = log_dir / f"{prefix}.log"
        argv = [sys.executable, "-m", "bench._fleetsim", "--coordinator", address, "--prefix", prefix, "--count", str(count)]
        if not skip_heartbeats:
            argv.append("--no-heartbeat-skip")
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=str(REPO_ROOT),
                text=True, bufsize=1, start_new_session=True,
                preexec_fn=sched_idle if idle else None,
            )  # fmt: skip
        if idle:
            nice_session(self.popen.pid)

    def send(self, command: str) -> None:
        try:
            self.popen.stdin.write(command + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            self.popen.poll()
            raise BenchError(f"simulator {self.prefix} exited ({self.popen.returncode}): {self._log_tail()}") from None

    def answer(self, event: str, timeout_s: float = _ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """The next answer; BenchError if none within ``timeout_s``, the process died, or it answered an error."""
        if not select.select([self.popen.stdout], [], [], timeout_s)[0]:
            raise BenchError(f"simulator {self.prefix} gave no {event!r} answer within {timeout_s:g}s: {self._log_tail()}")
        line = self.popen.stdout.readline()
        if not line:
            raise BenchError(f"simulator {self.prefix} exited ({self.popen.poll()}): {self._log_tail()}")
        reply = json.loads(line)
        if reply.get("event") != event:
            raise BenchError(f"simulator {self.prefix} answered {reply} (wanted {event}): {self._log_tail()}")
        return reply

    def ask(self, command: str, event: str) -> dict[str, Any]:
        self.send(command)
        return self.answer(event)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return "(no log)"

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(OSError, ValueError, BenchError):
                self.ask("stop", "stopped")
            try:
                self.popen.wait(timeout=_SIM_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, 9)
                self.popen.wait(timeout=10)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def _counters(port: int) -> dict[str, float]:
    """The coordinator's store group commits, and its garbage collector's pauses, so far.

    ``commits``: ``xpipe_store_commit_seconds_count``; ``gc_s``: the sum of
    ``xpipe_gc_pause_seconds_total`` over generations; ``gc_full``: full collections.
    """
    out = {"commits": 0.0, "gc_s": 0.0, "gc_full": 0.0}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            value = line.rsplit(" ", 1)[-1]
            if line.startswith("xpipe_store_commit_seconds_count"):
                out["commits"] = float(value)
            elif line.startswith("xpipe_gc_pause_seconds_total{"):
                out["gc_s"] += float(value)
            elif line.startswith("xpipe_gc_collections_total{") and 'generation="2"' in line:
                out["gc_full"] = float(value)
    return out


def _stats(sims: Sequence[_Sim]) -> list[dict[str, Any]]:
    for sim in sims:
        sim.send("stats")
    return [sim.answer("stats") for sim in sims]


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _main_thread_cpu_s(proc: psutil.Process) -> float:
    """CPU of the process's main thread (its asyncio loop, where the GIL-bound work runs).

    The rest of a coordinator's CPU is mostly gRPC's own threads (polling, HTTP/2), which can
    run on another core: the main thread's share is what caps tasks/s.
    """
    for t in proc.threads():
        if t.id == proc.pid:
            return t.user_time + t.system_time
    return 0.0


def _wait(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


@contextlib.contextmanager
def _profiled(out_dir: Path | None, pid: int, stem: str) -> Iterator[None]:
    """py-spy on the coordinator for the body (when ``out_dir``); the top frames go to STEM.top.txt."""
    if out_dir is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = PySpy(pid, out_dir / f"{stem}-coordinator.txt")
    try:
        yield
    finally:
        path = spy.stop()
        (out_dir / f"{stem}.top.txt").write_text(format_top(f"coordinator, {stem}", read_profile(path), limit=25) + "\n")


def _requeue_reasons(log_path: Path) -> dict[str, int]:
    """Counts of the coordinator's "requeueing attempt ...: REASON [stimulus]" lines, by reason."""
    reasons: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            if "requeueing attempt" in line:
                reason = line.split("): ", 1)[-1].rsplit(" [", 1)[0]
                reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def _wide_spec(n: int, name: str = "fleet-wide"):
    from xpipe import Pipeline, Task

    p = Pipeline(f"{name}-{n}")
    p.add_tasks([Task(f"t{i}", tasks.noop, args=(i,)) for i in range(n)])
    return p


def run_fleet(
    workers: int, *, tasks_n: int, procs: int, idle_s: float, lost: int, heartbeat_timeout_s: float,
    heartbeat_interval_s: float, workdir: Path | None = None, prefetch: int | None = None, keep_dir: Path | None = None,
    profile_dir: Path | None = None, connect_rate_per_s: float = 0.0, run_timeout_s: float = _RUN_TIMEOUT_S,
    max_heartbeats_per_s: float | None = None, sims_idle: bool = False, skip_heartbeats: bool = True, warm: bool = False,
    gc_threshold: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One sample at ``workers`` simulated workers; see the module docstring for what is measured.

    Raises:
        BenchError: a process died, a wait timed out, or a check failed (the run did not
            succeed, a task was answered twice or never, a worker was not listed).
    """
    procs = max(1, min(procs, workers))
    lost = min(lost, workers // 2)
    metrics_port = free_port()
    extra = ["--heartbeat-timeout-s", str(heartbeat_timeout_s), "--heartbeat-interval-s", str(heartbeat_interval_s),
             "--metrics-listen", f"127.0.0.1:{metrics_port}"]  # fmt: skip
    if prefetch is not None:
        extra += ["--prefetch", str(prefetch)]
    if max_heartbeats_per_s is not None:
        extra += ["--max-heartbeats-per-s", str(max_heartbeats_per_s)]
    if gc_threshold is not None:
        extra += ["--gc-threshold", str(gc_threshold)]
    result: dict[str, Any] = {"workers": workers, "tasks": tasks_n, "procs": procs, "lost": lost, "connect_rate_per_s": connect_rate_per_s,
                              "heartbeat_timeout_s": heartbeat_timeout_s, "heartbeat_interval_s": heartbeat_interval_s,
                              "max_heartbeats_per_s": max_heartbeats_per_s, "sims_idle": sims_idle,
                              "skip_heartbeats": skip_heartbeats, "warm": warm, "gc_threshold": gc_threshold}  # fmt: skip
    with contextlib.ExitStack() as stack:
        tmp = keep_dir if keep_dir is not None else stack.enter_context(tempfile.TemporaryDirectory(prefix="xpipe-fleet-", dir=workdir))
        cluster = stack.enter_context(XpipeCluster(Path(tmp), workers=0, coordinator_args=extra))
        coordinator = psutil.Process(cluster.coordinator_pid)
        sampler = RssSampler(cluster.coordinator_pid).start()
        env = cluster._env()
        sims: list[_Sim] = []
        try:
            shares = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
            sims = [_Sim(cluster.address, f"sim{i}", n, Path(tmp) / "logs", env, idle=sims_idle, skip_heartbeats=skip_heartbeats)
                    for i, n in enumerate(shares)]  # fmt: skip
            for sim in sims:
                sim.answer("ready")
            # -- register
            t0 = time.time()
            rate = f" {connect_rate_per_s / len(sims):g}" if connect_rate_per_s else ""
            for sim in sims:
                sim.send("connect" + rate)
            deadline = time.monotonic() + _REGISTER_TIMEOUT_S
            registered = [sim.answer("registered", max(0.1, deadline - time.monotonic())) for sim in sims]
            result["register_s"] = max(r["last_at"] for r in registered) - t0
            pm = cluster.manager
            _wait(lambda: sum(w.state == "ready" for w in pm.client.list_workers()) == workers, 60.0, f"{workers} ready workers listed")
            result["rss_registered_bytes"] = coordinator.memory_info().rss
            # -- idle heartbeats (the window is the measurement, not a synchronization); the
            # coordinator may stretch the interval (--max-heartbeats-per-s) within a second.
            time.sleep(2 * heartbeat_interval_s + 1.0)
            before, cpu0, main0 = _stats(sims), _cpu_s(coordinator), _main_thread_cpu_s(coordinator)
            with _profiled(profile_dir, coordinator.pid, f"{workers}-idle"):
                time.sleep(idle_s)
            after, cpu1, main1 = _stats(sims), _cpu_s(coordinator), _main_thread_cpu_s(coordinator)
            result["idle_coordinator_main_thread_cpu_pct"] = 100 * (main1 - main0) / idle_s
            beats = sum(a["heartbeats"] - b["heartbeats"] for a, b in zip(after, before))
            result.update(
                idle_window_s=idle_s, idle_heartbeats=beats, idle_coordinator_cpu_s=cpu1 - cpu0,
                idle_coordinator_cpu_pct=100 * (cpu1 - cpu0) / idle_s,
                heartbeat_cpu_us=1e6 * (cpu1 - cpu0) / max(1, beats), idle_heartbeats_per_s=beats / idle_s,
                pace_changes=sum(a["pace_changes"] for a in after),
                idle_sim_cpu_pct=100 * sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before)) / idle_s,
            )  # fmt: skip
            # -- warm-up (with --warm): a long-lived worker has run tasks before, so the
            # coordinator knows how long they take and gives it a deep queue (prefetch) from the
            # first batch. A fresh one gets one spare per slot until its first results come.
            if warm:
                _wait_terminal(pm, pm.submit(_wide_spec(2 * workers, "fleet-warmup")), run_timeout_s)
            # -- throughput
            spec = _wide_spec(tasks_n)
            before, cpu0, main0 = _stats(sims), _cpu_s(coordinator), _main_thread_cpu_s(coordinator)
            counters0 = _counters(metrics_port)
            with _profiled(profile_dir, coordinator.pid, f"{workers}-run"):
                start = time.perf_counter()
                run_id = pm.submit(spec)
                status = "unknown"
                for event in pm.client.watch(run_id, summary_only=True):
                    status = event.summary.state.lower()
                    if status in ("succeeded", "failed", "cancelled"):
                        break
                    if time.perf_counter() - start > run_timeout_s:
                        raise BenchError(f"run {run_id} did not finish within {run_timeout_s:g}s; requeues by reason: "
                                         f"{_requeue_reasons(cluster.coordinator.log_path)}")
                seconds = time.perf_counter() - start
            after, cpu1, main1 = _stats(sims), _cpu_s(coordinator), _main_thread_cpu_s(coordinator)
            result["coordinator_main_thread_cpu_pct"] = 100 * (main1 - main0) / seconds
            # Engine turns that committed (one store group commit each): fewer, bigger turns
            # amortise the per-turn cost over more tasks.
            counters1 = _counters(metrics_port)
            result["run_commits"] = int(counters1["commits"] - counters0["commits"])
            # The garbage collector's pauses on the coordinator during the run (--gc-threshold).
            result["run_gc_s"] = counters1["gc_s"] - counters0["gc_s"]
            result["run_gc_full"] = int(counters1["gc_full"] - counters0["gc_full"])
            if status != "succeeded":
                raise BenchError(f"run {run_id} ended {status}")
            done = sum(a["done"] - b["done"] for a, b in zip(after, before))
            if done < tasks_n:
                raise BenchError(f"simulated workers answered {done} assignments for {tasks_n} tasks")
            # More answers than tasks: some attempts were requeued (at-least-once); say why.
            result["extra_answers"] = done - tasks_n
            if done > tasks_n:
                result["requeue_reasons"] = _requeue_reasons(cluster.coordinator.log_path)
            sim_cpu = [a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before)]
            # Messages per task each way: what batching saves is fixed per-message cost.
            to_workers = sum(a["assignment_messages"] - b["assignment_messages"] for a, b in zip(after, before))
            from_workers = sum(a["event_messages"] - b["event_messages"] for a, b in zip(after, before))
            result.update(
                run_s=seconds, tasks_per_s=tasks_n / seconds, coordinator_cpu_s=cpu1 - cpu0,
                coordinator_cpu_us_per_task=1e6 * (cpu1 - cpu0) / tasks_n,
                coordinator_cpu_pct=100 * (cpu1 - cpu0) / seconds,
                # The same, less what the idle heartbeats cost over as long: the tasks' own share.
                coordinator_cpu_us_per_task_net=1e6 * max(0.0, cpu1 - cpu0 - result["idle_coordinator_cpu_s"] * seconds / idle_s) / tasks_n,
                sim_cpu_pct_total=100 * sum(sim_cpu) / seconds, sim_cpu_pct_max=100 * max(sim_cpu) / seconds,
                sim_cpu_us_per_task=1e6 * sum(sim_cpu) / tasks_n,
                assignment_messages=to_workers, event_messages=from_workers,
                assignments_per_message=done / max(1, to_workers), events_per_message=done / max(1, from_workers),
                run_heartbeats=sum(a["heartbeats"] - b["heartbeats"] for a, b in zip(after, before)),
                run_heartbeats_skipped=sum(a["heartbeats_skipped"] - b["heartbeats_skipped"] for a, b in zip(after, before)),
                errors=sum(a["errors"] for a in after), resets=sum(a["resets"] for a in after),
                sim_rss_bytes=sum(a["rss_bytes"] for a in after),
            )  # fmt: skip
            # -- lost detection: spread the cut over the simulators
            cut_names: set[str] = set()
            cut_at = 0.0
            left = lost
            for i, sim in enumerate(sims):
                k = left // (len(sims) - i)
                left -= k
                if k:
                    reply = sim.ask(f"cut {k}", "cut")
                    cut_names.update(reply["names"])
                    cut_at = max(cut_at, reply["at"])
            polls = 0

            def all_lost() -> bool:
                nonlocal polls
                polls += 1
                return sum(w.name in cut_names and w.state == "lost" for w in pm.client.list_workers()) == len(cut_names)

            # The timeout stretches with the interval (--max-heartbeats-per-s): allow for it.
            _wait(all_lost, heartbeat_timeout_s * max(1.0, workers / 100) + 60.0, f"{len(cut_names)} cut workers listed as lost", interval_s=0.05)
            result["lost_detect_s"] = time.time() - cut_at
            result["lost_polls"] = polls
            result["rss_peak_bytes"] = sampler.stop()
            # Streams that ended and registered again over the whole sample, by why they ended.
            reconnects: dict[str, int] = {}
            for stats in _stats(sims):
                for why, count in stats["reconnects"].items():
                    reconnects[why] = reconnects.get(why, 0) + count
            result["reconnects"] = reconnects
        finally:
            for sim in sims:
                sim.stop()
            if sampler.failed is None:
                sampler.stop()
    return result


def _row(r: dict[str, Any]) -> str:
    return (f"{r['workers']:>7} {r['register_s']:>9.2f} {r['tasks_per_s']:>8.0f} {r['coordinator_cpu_us_per_task']:>10.0f} {r['coordinator_cpu_us_per_task_net']:>8.0f} "
            f"{r['coordinator_cpu_pct']:>7.0f} {r['sim_cpu_pct_total']:>7.0f} {r['sim_cpu_us_per_task']:>8.0f} "
            f"{r['assignments_per_message']:>7.1f} {r['events_per_message']:>7.1f} {r['heartbeat_cpu_us']:>8.0f} "
            f"{r['idle_coordinator_cpu_pct']:>8.1f} {r['rss_peak_bytes'] / 2**20:>8.0f} {r['lost_detect_s']:>7.2f} "
            f"{1000 * r['run_gc_s']:>6.0f}")  # fmt: skip


HEADER = (f"{'workers':>7} {'register':>9} {'tasks/s':>8} {'cpu us/t':>10} {'net us/t':>8} {'coord%':>7} {'sims%':>7} "
          f"{'sim us/t':>8} {'asg/msg':>7} {'ev/msg':>7} "
          f"{'us/hb':>8} {'idle%':>8} {'RSS MiB':>8} {'lost s':>7} {'gc ms':>6}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[2, 1000, 10_000], help="fleet sizes, one sample each")
    p.add_argument("--tasks", type=int, default=20_000, help="no-op tasks in the wide pipeline")
    p.add_argument("--procs", type=int, default=4, help="simulator processes")
    p.add_argument("--idle-s", type=float, default=20.0, help="window for the idle heartbeat cost")
    p.add_argument("--lost", type=int, default=100, help="workers cut at once for lost detection")
    p.add_argument("--heartbeat-timeout-s", type=float, default=5.0, help="the coordinator's flag (default there: 10)")
    p.add_argument("--heartbeat-interval-s", type=float, default=1.0, help="the coordinator's flag (its default: 1)")
    p.add_argument("--prefetch", type=int, default=None, help="the coordinator's --prefetch (default: its own)")
    p.add_argument("--max-heartbeats-per-s", type=float, default=None, metavar="RATE",
                   help="the coordinator's flag (default: its own; 0: no cap)")
    p.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                   help="the coordinator's --gc-threshold (default: its own; 700 is Python's)")
    p.add_argument("--sims", choices=("same", "idle"), default="same",
                   help="idle: the simulators run under SCHED_IDLE, only on CPU the coordinator leaves (default: same)")
    p.add_argument("--no-heartbeat-skip", action="store_true",
                   help="simulated workers heartbeat every interval, even just after sending outcomes")
    p.add_argument("--warm", action="store_true",
                   help="run 2 no-op tasks per worker before the measured run, as a long-lived fleet has")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep the data and logs under DIR/N (default: removed)")
    p.add_argument("--connect-rate", type=float, default=0.0, metavar="PER_S",
                   help="workers connecting per second, all simulators together (default 0: all at once)")
    p.add_argument("--run-timeout-s", type=float, default=_RUN_TIMEOUT_S, help="the wide run fails after this long")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the coordinator (idle window, run) into DIR")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the JSON results")
    opts = p.parse_args(argv)
    for name in ("tasks", "procs", "lost"):
        if getattr(opts, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(opts, name)}")
    if min(opts.workers) < 2:
        p.error(f"--workers must each be at least 2, got {min(opts.workers)}")
    load = os.getloadavg()
    out: dict[str, Any] = {"kind": "fleet", "machine": machine_info(), "load_before": load,
                           "argv": sys.argv[1:] if argv is None else list(argv), "samples": []}  # fmt: skip
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(HEADER, flush=True)
    try:
        status = _run_sizes(opts, out)
    finally:  # also on Ctrl-C or SIGTERM: the samples taken so far are kept
        opts.out.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = opts.out / f"{stamp}-fleet.json"
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
    return status


def _run_sizes(opts: argparse.Namespace, out: dict[str, Any]) -> int:
    status = 0
    for n in opts.workers:
        try:
            r = run_fleet(n, tasks_n=opts.tasks, procs=opts.procs, idle_s=opts.idle_s, lost=opts.lost,
                          heartbeat_timeout_s=opts.heartbeat_timeout_s, heartbeat_interval_s=opts.heartbeat_interval_s,
                          prefetch=opts.prefetch, keep_dir=opts.keep / str(n) if opts.keep else None,
                          profile_dir=opts.profile, connect_rate_per_s=opts.connect_rate,
                          run_timeout_s=opts.run_timeout_s, max_heartbeats_per_s=opts.max_heartbeats_per_s,
                          sims_idle=opts.sims == "idle", skip_heartbeats=not opts.no_heartbeat_skip,
                          warm=opts.warm, gc_threshold=opts.gc_threshold)  # fmt: skip
        except BenchError as exc:
            print(f"{n:>7} FAILED: {exc}", file=sys.stderr)
            out["samples"].append({"workers": n, "error": str(exc)})
            status = 1
            continue
        r["load_after"] = os.getloadavg()
        out["samples"].append(r)
        print(_row(r), flush=True)
    return status


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the coordinator and the simulators are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
