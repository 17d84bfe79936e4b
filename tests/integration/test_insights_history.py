"""Run history, the performance report, the real-time view and forecasts on a real cluster.

A real coordinator and worker on loopback run a pipeline a few times (one task slow by
design, one that fails once and is retried, one that measures itself); ``GetHistory``
must tell each run as it happened, and the insights built on it must agree.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from xpipe import Pipeline, PipelineManager, Task
from xpipe._client import Client
from xpipe.insights._history import load_history
from xpipe.insights._report import percentile

from tests import helpers_tasks as ht
from tests.harness import Cluster, SecureSetup, eventually

SLOW_S = 0.6
FAST_S = 0.05
BUSY_CPU_S = 0.1
#: Slack for a task's measured duration over what it sleeps (process start is not in it; a loaded machine).
SLACK_S = 2.0
RUNS = 3


def burn() -> str:
    """Real CPU work, so the history's cpu_s is a measurement."""
    started = time.process_time()
    while time.process_time() - started < BUSY_CPU_S:
        pass
    return "burnt"


def history_pipeline(counter_dir: Path, name: str = "insights_hist") -> Pipeline:
    counter_dir.mkdir(parents=True, exist_ok=True)
    p = Pipeline(name)
    fast = Task("fast", ht.sleep, args=(FAST_S,))
    slow = Task("slow", ht.sleep, args=(SLOW_S,))
    p.add_tasks([
        fast, slow, Task("sum", ht.add, depends_on=[fast, slow]),
        Task("flaky", ht.fail_times, args=(str(counter_dir), 1), max_retries=1, retry_delay_s=0.05),
    ])  # fmt: skip
    p.track_performance(burn)
    return p


def test_history_report_and_forecast_follow_real_runs(tmp_path: Path):
    with Cluster(tmp_path, workers=1, slots=4) as cluster, PipelineManager(coordinator=cluster.address) as pm:
        results = [pm.execute_pipeline(history_pipeline(tmp_path / f"c{i}"), monitor=False, timeout_s=60)
                   for i in range(RUNS)]  # fmt: skip
        assert all(r.succeeded for r in results)
        dashboard = pm.get_monitoring_dashboard()
        h = dashboard.history("insights_hist")
        assert [r.run_id for r in h.runs] == [r.run_id for r in reversed(results)]  # newest first
        assert h.note == ""
        for run in h.runs:
            info = pm.client.get_run(run.run_id)
            assert (run.state, run.namespace, run.pipeline) == ("RUN_SUCCEEDED", "default", "insights_hist")
            assert run.finished_at == pytest.approx(info.summary.finished_at)
            tasks = {t.name: t for t in run.tasks}
            assert set(tasks) == {"fast", "slow", "sum", "flaky", "burn"}
            for t in run.tasks:
                assert t.state == "SUCCEEDED" and t.worker == "w0"
                assert t.started_at == pytest.approx(info.task(t.name).started_at)
                assert t.duration_s == pytest.approx(t.finished_at - t.started_at)
                assert t.requested_cpu == 1.0
                assert t.ready_at > 0 and 0 <= t.queue_wait_s < 5, t
            assert SLOW_S <= tasks["slow"].duration_s < SLOW_S + SLACK_S
            assert FAST_S <= tasks["fast"].duration_s < FAST_S + SLACK_S
            assert (tasks["flaky"].attempts, tasks["flaky"].retries) == (2, 1)
            assert (tasks["slow"].attempts, tasks["slow"].retries) == (1, 0)
            assert tasks["sum"].depends_on == ("fast", "slow")
            # sum became READY when slow (its last upstream) ended.
            assert tasks["sum"].ready_at >= tasks["slow"].finished_at - 0.05
            assert tasks["burn"].cpu_s >= BUSY_CPU_S * 0.9 and tasks["burn"].peak_rss_bytes > 10 * 2**20
            assert tasks["slow"].cpu_s == 0.0  # not measured: left 0

        # Bounded: max_runs cuts the answer and says so.
        cut = load_history(pm.client, "insights_hist", max_runs=2)
        assert len(cut.runs) == 2 and cut.note == "only the newest 2 of 3 runs (max_runs)"
        assert load_history(pm.client, "insights_hist", since=h.runs[0].created_at).runs == h.runs[:1]
        assert load_history(pm.client, "no_such_pipeline").runs == ()

        report = dashboard.generate_performance_report("insights_hist")
        by = {t.name: t for t in report.tasks}
        slow_durations = [next(t for t in r.tasks if t.name == "slow").duration_s for r in h.runs]
        assert by["slow"].p50_s == pytest.approx(statistics.median(slow_durations))
        assert by["slow"].p95_s == pytest.approx(percentile(slow_durations, 95))
        assert by["slow"].max_s == pytest.approx(max(slow_durations))
        # slow -> sum is the critical path of a run unless a side task (burn, flaky) took longer
        # there (it can, on a loaded machine): the share counts the runs where it did not.
        d = [{t.name: t.duration_s for t in r.tasks} for r in h.runs]
        on_path = [x["slow"] + x["sum"] >= max(x["burn"], x["flaky"]) for x in d]
        assert by["slow"].critical_share == pytest.approx(sum(on_path) / RUNS) and by["fast"].critical_share == 0.0
        if any(on_path):
            assert by["slow"].critical_time_share > 0.9  # sum takes next to nothing
        assert by["flaky"].retries == RUNS and by["flaky"].failure_rate == pytest.approx(0.5)
        assert by["slow"].failure_rate == 0.0
        assert by["burn"].cpu_s >= BUSY_CPU_S * 0.9 and by["slow"].cpu_s is None
        (p,) = report.pipelines
        assert (p.pipeline, p.runs, p.succeeded, p.failed) == ("insights_hist", RUNS, RUNS, 0)
        assert p.max_s == pytest.approx(max(r.duration_s for r in h.runs))
        assert "slow" in str(report)
        page = report.to_html(tmp_path / "report.html").read_text()
        assert page.count("<svg") == 2

        forecast = dashboard.forecast_duration(history_pipeline(tmp_path / "plan"))
        measured = statistics.median(r.duration_s for r in h.runs)
        assert forecast.has_basis and forecast.low_s <= measured <= forecast.high_s, (forecast, measured)
        assert measured * 0.5 <= forecast.expected_s <= measured * 1.5
        assert forecast.expected_s >= SLOW_S


def test_real_time_view_follows_the_current_run_then_the_next(tmp_path: Path):
    with Cluster(tmp_path, workers=1, slots=2) as cluster, PipelineManager(coordinator=cluster.address) as pm:
        dashboard = pm.get_monitoring_dashboard()
        p = Pipeline("insights_rt")
        p.add_task(Task("hold", ht.sleep, args=(1.0,)))
        view = dashboard.start_real_time_view("insights_rt", interval_s=0.1)
        assert view.wait_for_poll() and view.snapshot()["run_id"] == ""  # nothing ran yet
        first = pm.submit(p)
        snap = eventually(lambda: (s := view.snapshot())["run_id"] == first and s["tasks"][0]["state"] == "RUNNING"
                          and s["tasks"][0]["duration_s"] > 0 and s, timeout_s=20, message="first run seen running")  # fmt: skip
        assert snap["state"] == "RUNNING" and snap["counts"] == {"RUNNING": 1} and snap["elapsed_s"] > 0
        assert snap["tasks"][0]["worker"] == "w0" and snap["error"] == ""
        done = eventually(lambda: (s := view.snapshot())["state"] == "SUCCEEDED" and s, timeout_s=20,
                          message="first run seen finished")  # fmt: skip
        assert done["run_id"] == first and done["counts"] == {"SUCCEEDED": 1}
        assert done["tasks"][0]["duration_s"] >= 1.0
        second = pm.submit(p)
        eventually(lambda: view.snapshot()["run_id"] == second, timeout_s=20, message="the next run followed")
        assert view.url == (f"{dashboard.url.rstrip('/')}/#/runs/{second}" if dashboard.url else "")
        view.stop()
        assert not view.running
        stopped_at = view.snapshot()["updated_at"]
        other = dashboard.start_real_time_view(p, interval_s=0.1)
        assert other.wait_for_poll() and other.snapshot()["run_id"] == second
        assert view.snapshot()["updated_at"] == stopped_at  # a stopped view polls no more
        with pytest.raises(ValueError, match="interval_s must be a number of seconds from 0.05 to 3600, got 0"):
            dashboard.start_real_time_view(p, interval_s=0)
        pm.client.cancel(second)
    assert not other.running  # the manager's close stopped it


def test_history_shows_only_the_namespaces_the_caller_may_read(tmp_path: Path):
    principals = {**SecureSetup.DEFAULT_PRINCIPALS, "teama": ["submitter"], "teamb": ["submitter"]}
    setup = SecureSetup(tmp_path, principals=principals, namespaces={"teama": ["team-a"], "teamb": ["team-b"]})
    with Cluster(tmp_path, workers=1, slots=2, security=setup) as cluster:
        run_ids: dict[str, list[str]] = {}
        for team, namespace, n in (("teamb", "team-b", 1), ("teama", "team-a", 3)):  # team-a's are newest
            with Client(cluster.address, **cluster.client_options(team)) as client:
                p = Pipeline("shared_name", namespace=namespace)
                p.add_task(Task("one", ht.echo, args=(1,)))
                run_ids[team] = [client.submit(p) for _ in range(n)][::-1]  # newest first
        every = run_ids["teama"] + run_ids["teamb"]
        with Client(cluster.address, **cluster.client_options("admin")) as admin:
            eventually(lambda: all(admin.get_run(r).summary.finished for r in every), timeout_s=30,
                       message="every run finished")  # fmt: skip
            assert [r.run_id for r in load_history(admin, "shared_name").runs] == every
        for team, namespace in (("teama", "team-a"), ("teamb", "team-b")):
            with Client(cluster.address, **cluster.client_options(team)) as client:
                h = load_history(client, "shared_name")
                assert [(r.run_id, r.namespace) for r in h.runs] == [(r, namespace) for r in run_ids[team]]
                assert h.note == ""
        with Client(cluster.address, **cluster.client_options("teamb")) as client:
            h = load_history(client, "shared_name", max_runs=1)  # team-b's one run is behind team-a's three
            assert [r.run_id for r in h.runs] == run_ids["teamb"] and h.note == ""
        with Client(cluster.address, **cluster.client_options("teama")) as client:
            h = load_history(client, "shared_name", max_runs=1)
            assert [r.run_id for r in h.runs] == run_ids["teama"][:1]
            assert h.note == "only the newest 1 of more than 1 runs (max_runs)"
            h = load_history(client, "shared_name", max_runs=2)
            assert [r.run_id for r in h.runs] == run_ids["teama"][:2]
            assert h.note == "only the newest 2 of more than 2 runs (max_runs)"  # team-b's run not looked up


# ---- bounds and answer time: a real coordinator in this process, its store filled with finished runs


def _finished_runs(n_runs: int, n_tasks: int, t0: float) -> list:
    """Records of ``n_runs`` finished runs of a chain of ``n_tasks`` tasks (each 0.01 s)."""
    from xpipe._proto import common_pb2 as pb
    from xpipe.coordinator._events import RunRecord, TaskRecord

    records = []
    for i in range(n_runs):
        run_id = f"hist{i:04d}"
        spec = pb.PipelineSpec(name="filled", namespace="default")
        for j in range(n_tasks):
            spec.tasks.add(name=f"t{j}", depends_on=[f"t{j - 1}"] if j else [])
        created = t0 + i
        records.append(RunRecord(run_id, "filled", pb.RUN_SUCCEEDED, created, created + n_tasks * 0.01, n_tasks, spec))
        records += [TaskRecord(run_id, f"t{j}", pb.SUCCEEDED, 1, "w0", created + j * 0.01, created + (j + 1) * 0.01)
                    for j in range(n_tasks)]  # fmt: skip
    return records


@pytest.fixture
def filled(tmp_path: Path, monkeypatch):
    """An in-process coordinator serving real gRPC on loopback, 100 finished runs of 100 tasks kept."""
    import asyncio
    import threading

    from xpipe.coordinator._engine import EngineConfig
    from xpipe.coordinator._server import Coordinator
    from xpipe.coordinator._store import SQLiteStore

    path = tmp_path / "data" / "xpipe.db"
    path.parent.mkdir(parents=True)

    async def fill() -> None:
        async with SQLiteStore(path) as store:
            await store.commit(_finished_runs(100, 100, time.time() - 1000))

    asyncio.run(fill())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="coordinator-loop", daemon=True)
    thread.start()
    run = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)  # noqa: E731
    coordinator = Coordinator(SQLiteStore(path), listen="127.0.0.1:0", config=EngineConfig())
    address = run(coordinator.start())
    try:
        with Client(address) as client:
            yield client
    finally:
        run(coordinator.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_history_of_100_runs_of_100_tasks_answers_quickly(filled):
    load_history(filled, "filled", max_runs=1)  # the connection is up
    started = time.perf_counter()
    h = load_history(filled, "filled")
    took_s = time.perf_counter() - started
    print(f"GetHistory: 100 runs x 100 tasks in {took_s * 1000:.0f} ms")
    assert len(h.runs) == 100 and all(len(r.tasks) == 100 for r in h.runs) and h.note == ""
    newest = h.runs[0]
    assert newest.run_id == "hist0099" and newest.tasks[5].depends_on == ("t4",)
    # No transition log for a stored run: t5 became READY when t4 (its upstream) ended.
    assert newest.tasks[5].ready_at == pytest.approx(newest.tasks[4].finished_at)
    assert newest.tasks[5].duration_s == pytest.approx(0.01)
    assert took_s < 5.0


def test_history_past_the_task_cap_leaves_older_runs_out_and_says_so(filled, monkeypatch):
    from xpipe.coordinator import _history

    monkeypatch.setattr(_history, "HISTORY_MAX_TASKS", 250)  # the real cap is 200,000: too big to fill here
    h = load_history(filled, "filled")
    assert [r.run_id for r in h.runs] == ["hist0099", "hist0098"]
    assert h.note == "only the newest 2 of 100 runs: the next would pass 250 tasks in all"


def test_real_time_view_says_when_the_coordinator_is_away_and_recovers(tmp_path: Path):
    with Cluster(tmp_path, workers=1, slots=1) as cluster, PipelineManager(
        coordinator=cluster.address, connect_timeout_s=1.0
    ) as pm:
        p = Pipeline("insights_away")
        p.add_task(Task("one", ht.echo, args=(1,)))
        run_id = pm.execute_pipeline(p, monitor=False, timeout_s=30).run_id
        dashboard = pm.get_monitoring_dashboard()
        with pytest.raises(ValueError, match="pipeline must be a Pipeline or a pipeline name, got 7"):
            dashboard.start_real_time_view(7)
        with dashboard.start_real_time_view(p, interval_s=0.1) as view:
            eventually(lambda: view.snapshot()["state"] == "SUCCEEDED", timeout_s=20, message="run seen")
            cluster.coordinator.terminate()
            away = eventually(lambda: (s := view.snapshot())["error"] and s, timeout_s=30, message="error shown")
            assert away["run_id"] == run_id and away["state"] == "SUCCEEDED"  # the last view is kept
            assert view.running
            cluster.restart_coordinator()
            eventually(lambda: view.snapshot()["error"] == "", timeout_s=30, message="the view recovered")
        assert not view.running
