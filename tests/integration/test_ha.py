"""HA on real processes: 3 coordinators on one real etcd, workers, kills, pauses, restarts.

Each test measures what it can and prints it (run with ``-s`` to see): failover time (kill ->
first assignment dispatched by the new leader, from that leader's log) and etcd writes per task.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import asyncio

import grpc
import pytest
from aetcd import rpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import (
    EtcdServer,
    Proc,
    StopWaiting,
    child_env,
    eventually,
    eventually_async,
    format_logs,
    free_ports,
)
from xpipe import Pipeline, PipelineManager, Task
from xpipe._client import leader_hint
from xpipe._proto import admin_pb2, admin_pb2_grpc, common_pb2, pipeline_pb2, pipeline_pb2_grpc, worker_pb2
from xpipe.coordinator._etcd_store import EtcdStore, FencedError
from xpipe.coordinator._events import RunRecord
from xpipe.coordinator._leader import LeaderElection

CLUSTER = "ha-test"


# --------------------------------------------------------------------------- tasks (run on workers)


def record(log_dir: str, name: str, seconds: float, value: int) -> int:
    """Note this execution in ``log_dir/name.runs`` (one line per execution), sleep, return value."""
    with open(Path(log_dir) / f"{name}.runs", "a") as f:
        f.write(f"{os.getpid()} {time.time():.3f}\n")
    time.sleep(seconds)
    return value


def total(*values: int) -> int:
    return sum(values)


def executions(log_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text().splitlines()) for p in log_dir.glob("*.runs")}


def wide(name: str, log_dir: Path, n: int, seconds: float) -> Pipeline:
    p = Pipeline(name)
    p.add_tasks([Task(f"t{i}", record, args=(str(log_dir), f"{name}-t{i}", seconds, i)) for i in range(n)])
    p.add_task(Task("sum", total, depends_on=[f"t{i}" for i in range(n)]))
    return p


# --------------------------------------------------------------------------- the cluster


class HACluster:
    """A real etcd, ``n`` coordinators sharing it (and one artifact dir), and workers."""

    def __init__(self, tmp_path: Path, *, n: int = 3, ttl_s: int = 2, heartbeat_timeout_s: float = 4.0):
        self.tmp_path = tmp_path
        self.ttl_s = ttl_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.etcd = EtcdServer(tmp_path)
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(n)]
        self.coordinators: dict[str, Proc] = {}
        self.workers: dict[str, Proc] = {}
        self.past: list[Proc] = []
        self.log_dir = tmp_path / "logs"
        self.runs_dir = tmp_path / "runs"
        self.runs_dir.mkdir()

    def __enter__(self) -> HACluster:
        try:
            self.etcd.start()
            for address in self.addresses:
                self.start_coordinator(address)
            self.wait_leader()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            print(format_logs(self.all_procs(), 60), file=sys.stderr)
        self.stop()

    def all_procs(self) -> list[Proc]:
        procs = [*self.past, *self.coordinators.values(), *self.workers.values()]
        return procs + ([self.etcd.proc] if self.etcd.proc is not None else [])

    def stop(self) -> None:
        for proc in self.workers.values():
            proc.kill()
        for proc in self.coordinators.values():
            proc.stop_signal(signal.SIGCONT)
        for proc in self.coordinators.values():
            proc.terminate(timeout_s=5)
        self.etcd.stop()

    @property
    def coordinator_list(self) -> str:
        return ",".join(self.addresses)

    def start_coordinator(self, address: str, *, ttl_s: int | None = None) -> Proc:
        old = self.coordinators.get(address)
        if old is not None:
            self.past.append(old)
        index = self.addresses.index(address)
        argv = [
            sys.executable, "-m", "xpipe.coordinator",
            "--listen", address,
            "--data-dir", str(self.tmp_path / f"c{index}"),
            "--store", f"etcd://{self.etcd.endpoint}",
            "--cluster", CLUSTER,
            "--lease-ttl-s", str(ttl_s or self.ttl_s),
            "--artifact-dir", str(self.tmp_path / "artifacts"),
            "--heartbeat-timeout-s", str(self.heartbeat_timeout_s),
            "--heartbeat-interval-s", "0.5",
        ]  # fmt: skip
        proc = self.coordinators[address] = Proc(f"coordinator{index}", argv, log_dir=self.log_dir)

        def serving() -> bool:
            if not proc.alive():
                raise StopWaiting(f"coordinator {address} exited with {proc.returncode}")
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        eventually(serving, timeout_s=20, message=f"coordinator {address} healthy")
        return proc

    def start_worker(self, name: str, coordinators: str | None = None, slots: int = 2) -> Proc:
        argv = [
            sys.executable, "-m", "xpipe.worker", "--coordinator", coordinators or self.coordinator_list,
            "--name", name, "--slots", str(slots), "--grace-s", "5",
        ]  # fmt: skip
        proc = self.workers[name] = Proc(name, argv, log_dir=self.log_dir)
        return proc

    def status(self, address: str) -> admin_pb2.ClusterStatus:
        with grpc.insecure_channel(address) as channel:
            return admin_pb2_grpc.AdminServiceStub(channel).GetClusterStatus(
                admin_pb2.GetClusterStatusRequest(), timeout=2.0
            )

    def live(self) -> list[str]:
        return [a for a, p in self.coordinators.items() if p.alive() and a in self.addresses]

    def wait_leader(self, *, among: list[str] | None = None, not_: str = "", timeout_s: float = 20) -> str:
        """Wait until every coordinator in ``among`` (default: the live ones) names one leader of them."""

        def agreed() -> str:
            asked = among or self.live()
            views = {a: self.status(a) for a in asked}
            leaders = {v.leader_address for v in views.values()}
            if len(leaders) != 1:
                raise LookupError(f"no agreement: {[(a, v.leader_address, v.term) for a, v in views.items()]}")
            leader = leaders.pop()
            if not leader or leader == not_ or leader not in asked:
                raise LookupError(f"leader is {leader!r}")
            return leader

        return eventually(agreed, timeout_s=timeout_s, interval_s=0.05, message="coordinators agree on a leader")

    def list_workers(self, address: str) -> dict[str, str]:
        with grpc.insecure_channel(address) as channel:
            reply = admin_pb2_grpc.AdminServiceStub(channel).ListWorkers(admin_pb2.ListWorkersRequest(), timeout=2.0)
        return {w.name: w.state for w in reply.workers}

    def wait_workers(self, leader: str, names: list[str]) -> None:
        def registered() -> bool:
            states = self.list_workers(leader)
            return all(states.get(n) in ("ready", "busy") for n in names)

        eventually(registered, timeout_s=20, message=f"workers {names} registered with {leader}")


def _first_dispatch_at(proc: Proc, after_line: int) -> float | None:
    lines = proc.log_text().splitlines()[after_line:]
    for line in lines:
        m = re.search(r"first assignment dispatched at (\S+)", line)
        if m:  # ISO 8601 in UTC, as every time our daemons log
            return datetime.fromisoformat(m.group(1)).timestamp()
    return None


def _store_counts(proc: Proc) -> tuple[int, int]:
    m = re.search(r"etcd store closed: (\d+) txns, (\d+) ops", proc.log_text())
    assert m, f"{proc.name} did not report its etcd writes:\n{proc.log_tail()}"
    return int(m.group(1)), int(m.group(2))


# --------------------------------------------------------------------------- tests


def test_three_coordinators_elect_one_leader_and_followers_redirect(tmp_path):
    with HACluster(tmp_path, ttl_s=2) as ha:
        leader = ha.wait_leader()
        followers = [a for a in ha.addresses if a != leader]
        views = [ha.status(a) for a in ha.addresses]
        assert {v.term for v in views} == {views[0].term} and views[0].term > 0
        assert all(sorted(v.members) == sorted(ha.addresses) for v in views), views

        # A follower turns clients away with the leader's address, in details and metadata.
        with grpc.insecure_channel(followers[0]) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pipeline_pb2_grpc.PipelineServiceStub(channel).ListRuns(pipeline_pb2.ListRunsRequest(), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == f"not leader; leader is {leader}"
        assert ("xpipe-leader", leader) in tuple(info.value.trailing_metadata())

        # ...and worker streams with one NotLeader message.
        from xpipe._proto import worker_pb2_grpc

        with grpc.insecure_channel(followers[0]) as channel:
            register = worker_pb2.WorkerMessage(register=worker_pb2.Register(worker_id="probe", slots=1))
            replies = list(worker_pb2_grpc.WorkerServiceStub(channel).Connect(iter([register]), timeout=5))
        assert [r.WhichOneof("body") for r in replies] == ["not_leader"]
        assert replies[0].not_leader.leader_address == leader

        # A worker and a client that know only a follower end up at the leader.
        ha.start_worker("w0", coordinators=followers[1])
        ha.start_worker("w1", coordinators=followers[0])
        ha.wait_workers(leader, ["w0", "w1"])
        n = 20
        with PipelineManager(coordinator=followers[1]) as pm:
            result = pm.execute_pipeline(wide("plain", ha.runs_dir, n, 0.0))
            assert pm.address == leader
        assert result.outputs["sum"] == sum(range(n))

        # The CLI, given a follower, prints the leader.
        out = subprocess.run(
            [sys.executable, "-m", "xpipe._cli", "cluster", "--json", "--coordinator", followers[0]],
            capture_output=True, text=True, timeout=30, env=child_env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["leader"] == leader and sorted(data["members"]) == sorted(ha.addresses)
        assert data["term"] == views[0].term and data["workers"] == 0  # a follower schedules nothing

        # Write amplification: etcd operations and transactions per task of that run.
        proc = ha.coordinators[leader]
        proc.terminate()
        txns, ops = _store_counts(proc)
        tasks = n + 1
        print(f"\netcd writes per task: {ops / tasks:.2f} ops in {txns / tasks:.2f} txns ({tasks} tasks)")
        assert ops / tasks < 6, f"{ops} etcd ops for {tasks} tasks"


def _wait_some_done(pm: PipelineManager, run_id: str, at_least: int) -> dict[str, int]:
    """Wait until ``at_least`` tasks succeeded; return {task: attempt} of the succeeded ones."""

    def done() -> dict[str, int]:
        tasks = pm.get_run(run_id).tasks
        finished = {name: t.attempts for name, t in tasks.items() if t.status == "succeeded"}
        return finished if len(finished) >= at_least else {}

    return eventually(done, timeout_s=30, interval_s=0.05, message=f"{at_least} tasks of {run_id} succeeded")


def _check_run(result, name: str, n: int, runs_dir: Path, done_before: dict[str, int]) -> None:
    """Right outputs; every task ran at least once; finished work was neither redone nor re-recorded."""
    assert result.succeeded, result
    assert result.outputs["sum"] == sum(range(n))
    ran = executions(runs_dir)
    for i in range(n):
        assert ran.get(f"{name}-t{i}", 0) >= 1, f"t{i} never ran"
    for task, attempts in done_before.items():
        assert result.tasks[task].attempts == attempts, f"{task} was recorded again after the failover"
        assert ran[f"{name}-{task}"] == 1, f"{task} had finished before the failover but ran again"


def test_kill_leader_mid_run_fails_over_and_records_each_completion_once(tmp_path):
    with HACluster(tmp_path, ttl_s=3) as ha:  # the default lease TTL: the failover time is the real one
        leader = ha.wait_leader()
        for i in range(2):
            ha.start_worker(f"w{i}")
        ha.wait_workers(leader, ["w0", "w1"])
        n = 24
        with PipelineManager(coordinator=ha.coordinator_list) as pm:
            run_id = pm.submit(wide("failover", ha.runs_dir, n, 0.4))
            done_before = _wait_some_done(pm, run_id, 4)
            marks = {a: len(p.log_text().splitlines()) for a, p in ha.coordinators.items()}
            old_term = ha.status(leader).term
            killed_at = time.time()
            ha.coordinators[leader].kill()
            new_leader = ha.wait_leader(among=[a for a in ha.addresses if a != leader], timeout_s=20)
            result = pm.wait(run_id, timeout_s=60)
        _check_run(result, "failover", n, ha.runs_dir, done_before)
        assert ha.status(new_leader).term > old_term
        dispatched = _first_dispatch_at(ha.coordinators[new_leader], marks[new_leader])
        assert dispatched is not None, "the new leader never dispatched"
        failover_s = dispatched - killed_at
        print(f"\nfailover (kill -9 -> first dispatch by the new leader, TTL 3 s): {failover_s:.2f} s")
        assert failover_s < 8.0


def test_paused_leader_cannot_write_and_steps_down(tmp_path):
    with HACluster(tmp_path, ttl_s=2) as ha:
        leader = ha.wait_leader()
        old_term = ha.status(leader).term
        for i in range(2):
            ha.start_worker(f"w{i}")
        ha.wait_workers(leader, ["w0", "w1"])
        n = 16
        with PipelineManager(coordinator=ha.coordinator_list) as pm:
            run_id = pm.submit(wide("paused", ha.runs_dir, n, 0.3))
            done_before = _wait_some_done(pm, run_id, 2)
            paused = ha.coordinators[leader]
            paused.stop_signal(signal.SIGSTOP)
            others = [a for a in ha.addresses if a != leader]
            new_leader = ha.wait_leader(among=others)
            assert ha.status(new_leader).term > old_term
            paused.stop_signal(signal.SIGCONT)
            # It wakes believing it leads; its lease is gone and its fence is stale: it steps down.
            eventually(lambda: "stepping down" in paused.log_text(), timeout_s=10, message="old leader stepped down")
            eventually(lambda: ha.status(leader).leader_address == new_leader, timeout_s=10,
                       message="old leader reports the new one")  # fmt: skip
            status = ha.status(leader)
            assert status.workers == 0 and status.active_runs == 0, "the deposed leader still schedules"
            result = pm.wait(run_id, timeout_s=60)
        _check_run(result, "paused", n, ha.runs_dir, done_before)
        log = paused.log_text()
        how = "fenced write refused" if "write refused" in log else "lease expiry noticed first"
        print(f"\npaused leader stepped down ({how})")
        assert ha.wait_leader() == new_leader


def test_etcd_restart_mid_run_resumes(tmp_path):
    with HACluster(tmp_path, ttl_s=2) as ha:
        leader = ha.wait_leader()
        for i in range(2):
            ha.start_worker(f"w{i}")
        ha.wait_workers(leader, ["w0", "w1"])
        n = 16
        with PipelineManager(coordinator=ha.coordinator_list, connect_timeout_s=60) as pm:
            run_id = pm.submit(wide("etcdrestart", ha.runs_dir, n, 0.3))
            done_before = _wait_some_done(pm, run_id, 2)
            ha.etcd.kill()
            proc = ha.coordinators[leader]
            # Without etcd the leader stops scheduling within its lease TTL.
            eventually(lambda: "stepping down" in proc.log_text(), timeout_s=10, message="leader stepped down")
            ha.etcd.start()
            ha.wait_leader(timeout_s=30)
            result = pm.wait(run_id, timeout_s=60)
        _check_run(result, "etcdrestart", n, ha.runs_dir, done_before)


def test_rolling_restart_of_all_coordinators_under_load(tmp_path):
    with HACluster(tmp_path, ttl_s=2) as ha:
        leader = ha.wait_leader()
        for i in range(2):
            ha.start_worker(f"w{i}")
        ha.wait_workers(leader, ["w0", "w1"])
        n = 100
        with PipelineManager(coordinator=ha.coordinator_list, connect_timeout_s=60) as pm:
            first = pm.submit(wide("rolling1", ha.runs_dir, n, 0.15))
            # Followers first, the leader last, as an operator would; each comes back before the next goes.
            order = [a for a in ha.addresses if a != leader] + [leader]
            for address in order:
                if address == leader:
                    print(f"\nrun state when the leader restarts: {pm.get_run(first).status}")
                ha.coordinators[address].terminate()
                ha.wait_leader(among=[a for a in ha.addresses if a != address])
                ha.start_coordinator(address)
                eventually(lambda: address in ha.status(address).members, timeout_s=10,
                           message=f"{address} rejoined")  # fmt: skip
            second = pm.submit(wide("rolling2", ha.runs_dir, 8, 0.0))
            results = [pm.wait(first, timeout_s=60), pm.wait(second, timeout_s=60)]
        _check_run(results[0], "rolling1", n, ha.runs_dir, {})
        assert results[1].outputs["sum"] == sum(range(8))
        assert sorted(ha.status(ha.wait_leader()).members) == sorted(ha.addresses)


def test_member_without_etcd_is_healthy_and_says_no_leader_is_elected(tmp_path):
    from xpipe._proto import worker_pb2_grpc

    port, etcd_port = free_ports(2)
    address = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", address, "--data-dir", str(tmp_path / "c"),
            "--store", f"etcd://127.0.0.1:{etcd_port}", "--cluster", CLUSTER]  # fmt: skip
    proc = Proc("coordinator-no-etcd", argv, log_dir=tmp_path / "logs")
    try:

        def serving() -> bool:
            if not proc.alive():
                raise StopWaiting(f"exited with {proc.returncode}")
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        eventually(serving, timeout_s=20, message="coordinator without etcd healthy")
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pipeline_pb2_grpc.PipelineServiceStub(channel).ListRuns(pipeline_pb2.ListRunsRequest(), timeout=5)
            status = admin_pb2_grpc.AdminServiceStub(channel).GetClusterStatus(
                admin_pb2.GetClusterStatusRequest(), timeout=5
            )
            register = worker_pb2.WorkerMessage(register=worker_pb2.Register(worker_id="probe", slots=1))
            replies = list(worker_pb2_grpc.WorkerServiceStub(channel).Connect(iter([register]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "not leader; no leader is elected yet"
        assert status.leader_address == "" and status.members == [address]
        assert [r.not_leader.leader_address for r in replies] == [""]
        assert proc.alive(), "a coordinator must wait for etcd, not exit"
    finally:
        print(proc.log_tail())
        proc.terminate()


# --------------------------------------------------------------------------- in-process election


def test_election_fencing_and_step_down_in_process(tmp_path):
    """The election's own mechanics against a real etcd, driven step by step."""

    def record_for(run_id: str) -> RunRecord:
        spec = common_pb2.PipelineSpec(name="p")
        return RunRecord(run_id, "p", common_pb2.RUN_RUNNING, time.time(), 0.0, 0, spec)

    async def main(endpoint: str) -> None:
        stores = [EtcdStore([endpoint], cluster="fence", artifact_dir=tmp_path / "art") for _ in range(3)]
        for store in stores:
            await store.open()
        a = LeaderElection(stores[0], ttl_s=2, address="127.0.0.1:1")
        b = LeaderElection(stores[1], ttl_s=2, address="127.0.0.1:2")
        deposed: dict[str, list[str]] = {"a": [], "b": []}
        engines: dict[str, asyncio.Future] = {}

        def callbacks(name: str):
            async def on_elected(term: int):
                engines[name] = asyncio.get_running_loop().create_future()  # "the engine": ends on failure
                return engines[name]

            async def on_deposed(reason: str) -> None:
                deposed[name].append(reason)

            return on_elected, on_deposed

        runs = [asyncio.create_task(a.run(*callbacks("a")))]
        await eventually_async(lambda: a.is_leader, message="a elected")
        runs.append(asyncio.create_task(b.run(*callbacks("b"))))
        await eventually_async(lambda: b.leader_address == a.address and b.term == a.term, message="b follows a")
        assert not b.is_leader
        await stores[0].commit([record_for("r1")])

        # An engine failing (a fenced or failed write) makes the leader step down and give up its lease.
        term_a = a.term
        engines["a"].set_exception(FencedError("simulated"))
        await eventually_async(lambda: deposed["a"], message="a stepped down")
        assert "engine stopped" in deposed["a"][0]
        await eventually_async(lambda: b.is_leader or (a.is_leader and a.term != term_a), message="a new term")
        leader, follower = (b, a) if b.is_leader else (a, b)
        await eventually_async(
            lambda: follower.leader_address == leader.address, message="the follower sees the new leader"
        )
        assert leader.term > term_a

        # A leader deposed behind its back (its lease revoked, as an expiry during a pause would):
        # a write with its old fence is refused, and it notices and steps down.
        lstore = stores[0] if leader is a else stores[1]
        fence = lstore.fence
        lease = leader._lease_id
        await stores[2].call(lambda s: s.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease)), what="revoke")
        stores[2].fence = fence
        with pytest.raises(FencedError, match=f"create_revision {fence.create_revision}"):
            await stores[2].commit([record_for("r2")])
        name = "a" if leader is a else "b"
        await eventually_async(
            lambda: len(deposed[name]) >= (2 if name == "a" else 1), message=f"{name} noticed its lease is gone"
        )
        assert "lease" in deposed[name][-1]
        await eventually_async(lambda: a.is_leader or b.is_leader, message="someone leads again")
        assert await stores[2].get_run("r2") is None

        a.stop()
        b.stop()
        await asyncio.gather(*runs)
        status = await LeaderElection(stores[2], address="x:1").status()
        assert status == ("", [], status[2]), "stopping must revoke the leases (leader and member keys)"
        for store in stores:
            await store.close()

    with EtcdServer(tmp_path) as etcd:
        asyncio.run(main(etcd.endpoint))


def test_election_and_hint_inputs_are_validated(tmp_path):
    store = EtcdStore(["127.0.0.1:1"], cluster="x", artifact_dir=tmp_path)
    with pytest.raises(ValueError, match="whole number of seconds, at least 2; got 1"):
        LeaderElection(store, ttl_s=1)
    with pytest.raises(ValueError, match="whole number of seconds"):
        LeaderElection(store, ttl_s=2.5)

    class _Err(grpc.RpcError):
        def __init__(self, metadata):
            self._metadata = metadata

        def trailing_metadata(self):
            return self._metadata

    assert leader_hint(_Err((("xpipe-leader", "10.0.0.1:7400"),))) == "10.0.0.1:7400"
    assert leader_hint(_Err((("xpipe-leader", "garbage"),))) == ""
    assert leader_hint(_Err((("xpipe-leader", "a:1,b:2"),))) == ""
    assert leader_hint(_Err(())) == ""
    assert leader_hint(grpc.RpcError()) == ""


def test_coordinator_rejects_bad_etcd_flags(tmp_path):
    for args, message in [
        (["--store", "etcd://nohost"], "bad etcd endpoint 'nohost'"),
        (["--store", "etcd://127.0.0.1:2379", "--cluster", "a/b"], "bad cluster name 'a/b'"),
        (["--store", "etcd://127.0.0.1:2379", "--lease-ttl-s", "1"], "at least 2; got 1"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), *args],
            capture_output=True, text=True, timeout=30, env=child_env(),
        )  # fmt: skip
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
