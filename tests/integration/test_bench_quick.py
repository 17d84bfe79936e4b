"""The benchmark harness: a quick run end to end, and each way it can fail.

Benchmarks are not tests; this only checks that ``python -m bench --quick`` still runs and
writes what it promises, and that a broken set-up fails with a clear message and leaves
no process behind. Everything runs real processes on loopback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench import _profile, _ray
from bench.__main__ import _Runner, build_parser, main
from bench._report import FULL, METRICS, BenchError, check_answer, format_table, percentile, summarise
from bench._xpipe import REPO_ROOT, RssSampler, XpipeCluster
from tests.harness import eventually

_BENCH_TIMEOUT_S = 240


def _run_bench(*args: str, timeout_s: float = _BENCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip


def _only_json(out: Path) -> dict:
    files = list(out.glob("*.json"))
    assert len(files) == 1, f"expected one results file in {out}, found {files}"
    return json.loads(files[0].read_text())


_HAS_DASK = importlib.util.find_spec("distributed") is not None
_HAS_RAY = importlib.util.find_spec("ray") is not None


def test_quick_run_writes_every_systems_numbers(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _run_bench("--quick", "--scenarios", "wide,roundtrip", "--repeats", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    doc = _only_json(tmp_path)
    assert doc["error"] is None
    assert doc["mode"] == "quick" and doc["repeats"] == 1
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["python"]
    assert doc["machine"]["versions"]["grpcio"]
    assert "commit" in doc["xpipe_source"] and "uncommitted_changes" in doc["xpipe_source"]
    assert set(doc["scenarios"]) == {"wide", "roundtrip"}

    wide = doc["scenarios"]["wide"]["samples"]
    assert len(wide["xpipe"]) == 1 and wide["xpipe"][0]["tasks"] == 500 and wide["xpipe"][0]["tasks_per_s"] > 0
    rt = doc["scenarios"]["roundtrip"]["samples"]["xpipe"][0]
    assert len(rt["latencies_ms"]) == 30 and 0 < rt["median_ms"] <= rt["p99_ms"]
    assert "wide" in proc.stdout and "results:" in proc.stdout, proc.stdout

    missing = []
    for system, installed in (("dask", _HAS_DASK), ("ray", _HAS_RAY)):
        row = doc["scenarios"]["wide"]["summary"][0]
        if not installed:
            assert doc["systems"][system].startswith("skipped: ") and row[f"ratio_{system}"] is None
            missing.append(system)
            continue
        assert doc["systems"][system] == "measured"
        assert doc["scenarios"]["wide"]["samples"][system][0]["tasks_per_s"] > 0
        assert len(doc["scenarios"]["roundtrip"]["samples"][system][0]["latencies_ms"]) == 30
        assert row[f"ratio_{system}"] == pytest.approx(row["xpipe"]["median"] / row[system]["median"])
    header = proc.stdout.splitlines()[0].split()
    assert header[2:7] == ["xpipe", "Dask", "Ray", "vs", "Dask"], proc.stdout
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}; only the others' numbers were checked")
    assert doc["scenarios"]["wide"]["summary"][0]["met"] in (True, False)
    positions = {s: doc["scenarios"]["wide"]["samples"][s][0]["position"] for s in ("xpipe", "dask", "ray")}
    assert positions == {"xpipe": 0, "dask": 1, "ray": 2}
    assert time.monotonic() - started < 120


def test_a_failed_run_is_recorded_and_exits_1(tmp_path: Path) -> None:
    # A real run that cannot finish within its timeout: the JSON keeps the error.
    proc = _run_bench(
        "--quick", "--no-dask", "--no-ray", "--scenarios", "wide", "--timeout-s", "0.001",
        "--out", str(tmp_path),
    )
    assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr[-4000:]}"
    doc = _only_json(tmp_path)
    assert "wide / xpipe / repeat 1" in doc["error"] and "TimeoutError" in doc["error"], doc["error"]
    assert doc["systems"]["dask"] == "skipped: --no-dask"
    assert doc["systems"]["ray"] == "skipped: --no-ray"
    assert "ERROR: wide / xpipe" in proc.stdout


def test_sigterm_stops_the_clusters_and_writes_what_was_measured(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as err_file:
        bench = subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--no-dask", "--no-ray", "--scenarios",
             "roundtrip,bigdag",
             "--out", str(tmp_path / "out")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
        )  # fmt: skip
    try:
        # Terminate while the bigdag scenario's cluster is up: roundtrip is then on record.
        def cluster_up() -> set[int]:
            assert bench.poll() is None, err.read_text()
            if "[bench] bigdag / xpipe / repeat 1 ..." not in err.read_text():
                return set()
            names = {p.pid: " ".join(p.cmdline()) for p in psutil.Process(bench.pid).children(recursive=True)}
            workers = [pid for pid, cmd in names.items() if "xpipe.worker" in cmd]
            return set(names) if len(workers) == 2 else set()

        pids = eventually(cluster_up, timeout_s=60, interval_s=0.01, message="bigdag cluster started")
        bench.terminate()
        assert bench.wait(timeout=60) == 143, err.read_text()[-3000:]
    finally:
        bench.kill()
        bench.wait()
    eventually(lambda: not _alive(pids), timeout_s=10, message=f"cluster processes gone: {_alive(pids)}")
    doc = _only_json(tmp_path / "out")
    assert doc["error"] == "terminated by SIGTERM during bigdag / xpipe / repeat 1", doc["error"]
    assert doc["scenarios"]["roundtrip"]["samples"]["xpipe"][0]["count"] == 30


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "wide,bogus"], "unknown scenario(s) ['bogus']"),
        (["--repeats", "0"], "must be at least 1"),
        (["--timeout-s", "-3"], "must be above 0"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_scenarios_are_deduplicated_and_default_to_all() -> None:
    assert build_parser().parse_args(["--scenarios", "chain,wide,chain"]).scenarios == ["chain", "wide"]
    assert build_parser().parse_args([]).scenarios == list(METRICS)


def _descendants(pids: list[int]) -> set[int]:
    found = set(pids)
    for pid in pids:
        try:
            found |= {p.pid for p in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_cluster_starts_and_stops_without_leftovers(tmp_path: Path) -> None:
    cluster = XpipeCluster(tmp_path).start()
    try:
        assert cluster.address.startswith("127.0.0.1:")
        names = {w.name for w in cluster.manager.client.list_workers()}
        assert names == {"w0", "w1"}
        pids = _descendants([cluster.coordinator_pid, *cluster.worker_pids()])
        assert len(pids) >= 3
        roles = cluster.process_roles()
        assert {"coordinator", "w0", "w1", "client"} <= set(roles) and roles["client"] == os.getpid()
        assert set(roles.values()) - {os.getpid()} <= pids
    finally:
        cluster.stop()
    assert not _alive(pids), f"left alive: {_alive(pids)}"
    cluster.stop()  # idempotent


def test_coordinator_that_exits_early_fails_with_its_log(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(BenchError, match=r"coordinator exited with status \d+ before it was ready") as info:
        XpipeCluster(tmp_path, coordinator_args=["--prefetch", "-1"]).start()
    assert "--prefetch must not be negative" in str(info.value)
    after = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not _alive(after)


def test_worker_that_exits_early_fails_and_stops_the_coordinator(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(BenchError, match=r"xpipe w\d exited with status 2 before the cluster was up") as info:
        XpipeCluster(tmp_path, worker_args=["--slots", "0"]).start()
    assert "--slots must be between 1 and 4096, got 0" in str(info.value)
    after = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not _alive(after)


def test_cluster_that_is_not_up_in_time_fails(tmp_path: Path) -> None:
    # A worker pointed at a port nobody serves never registers: the wait times out.
    with pytest.raises(BenchError, match=r"timed out after 1.5s waiting for workers"):
        XpipeCluster(tmp_path, startup_timeout_s=1.5, worker_args=["--coordinator", "127.0.0.1:9"]).start()


def test_wrong_answers_fail_the_benchmark() -> None:
    check_answer(3, 3, "ok")
    with pytest.raises(BenchError, match=r"end of the chain: expected 99, got 98"):
        check_answer(98, 99, "end of the chain")


def test_rss_sampler_keeps_the_peak_and_reports_a_vanished_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; b = bytearray(64 << 20); sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    try:
        sampler = RssSampler(proc.pid, interval_s=0.01).start()
        eventually(lambda: sampler.peak_bytes > 64 << 20, timeout_s=10, message="peak RSS above 64 MiB")
        proc.kill()
        proc.wait()
        eventually(lambda: sampler.failed is not None, timeout_s=10, message="sampler notices the exit")
        with pytest.raises(BenchError, match=rf"RSS sampling of pid {proc.pid} failed"):
            sampler.stop()
        assert sampler.peak_bytes > 64 << 20
    finally:
        proc.kill()
        proc.wait()


def test_percentile_and_summary() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile(list(range(101)), 99) == 99
    with pytest.raises(ValueError, match="percentile of no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within 0..100"):
        percentile([1], 101)
    rows = summarise("roundtrip", {"xpipe": [{"median_ms": 2.0, "p99_ms": 3.0}, {"median_ms": 4.0, "p99_ms": 5.0}],
                                   "dask": [{"median_ms": 30.0, "p99_ms": 40.0}],
                                   "ray": [{"median_ms": 2.0, "p99_ms": 4.0}]})  # fmt: skip
    median = rows[0]
    assert median["xpipe"] == {"median": 3.0, "min": 2.0, "max": 4.0, "n": 2}
    assert median["ratio_dask"] == pytest.approx(0.1)
    assert median["met"] is True, "goals are judged against Dask"
    assert median["ratio_ray"] == pytest.approx(1.5)
    table = format_table({"roundtrip": {"summary": rows}}).splitlines()
    assert table[0].split() == [
        "scenario", "metric", "xpipe", "Dask", "Ray", "vs", "Dask", "vs", "Ray", "goal", "met",
    ]  # fmt: skip
    assert table[2].split()[3:] == ["3", "[2-4]", "30.0", "2", "0.10x", "1.50x", "xpipe/Dask", "<=", "0.2",
                                    "yes"]  # fmt: skip
    rows = summarise("bigdag", {"xpipe": [{"peak_rss_mib": 900.0}, {"peak_rss_mib": 1100.0}], "dask": []})
    rss = next(r for r in rows if r["metric"] == "peak_rss_mib")
    assert rss["met"] is False, "the worst repeat must meet an absolute goal"
    table = format_table({"roundtrip": {"summary": summarise("roundtrip", {"xpipe": [{"median_ms": 2.0}]})}})
    assert table.splitlines()[2].split()[3:9] == ["2", "-", "-", "-", "-", "xpipe/Dask"], table
    assert FULL.wide == 10_000 and FULL.bigdag == 100_000


def test_top_frames_reads_collapsed_stacks() -> None:
    raw = "\n".join([
        "process 1:\"python\";main (a.py:1);loop (a.py:9);handle (b.py:3) 6",
        "process 1:\"python -m w\";process 2:\"python -c import a; a.main()\";main (a.py:1);loop (a.py:10);encode (c.py:7) 3",
        "main (a.py:2) 1",
        "garbage line",
    ])  # fmt: skip
    top = _profile.top_frames(raw)
    assert top["samples"] == 10
    assert top["self"][0] == ("handle (b.py)", 60.0)
    assert ("loop (a.py)", 90.0) in top["inclusive"] and ("main (a.py)", 100.0) in top["inclusive"]
    assert not any("import a" in frame or "process" in frame for frame, _ in top["inclusive"])
    assert "60.0%  handle (b.py)" in _profile.format_top("coordinator", top)


@pytest.mark.skipif(_profile.find_py_spy() is None, reason="py-spy is not installed")
def test_py_spy_profiles_a_real_process_and_fails_clearly_on_a_bad_pid(tmp_path: Path) -> None:
    # The target spins for a fixed amount of work once told to, then exits; py-spy stops
    # when its target exits, so the profile covers exactly that work.
    code = "import sys\ndef spin():\n    for _ in range(3000): sum(range(20000))\nsys.stdin.readline()\nspin()"
    busy = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    try:
        spy = _profile.PySpy(busy.pid, tmp_path / "busy.txt", rate_hz=500)
        busy.stdin.write("go\n")
        busy.stdin.flush()
        assert busy.wait(timeout=60) == 0
        top = _profile.read_profile(spy.stop())
    finally:
        busy.kill()
        busy.wait()
    assert top["samples"] > 0 and any("spin" in frame for frame, _ in top["inclusive"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(BenchError, match=r"py-spy exited with \d+ before sampling"):
        _profile.PySpy(dead.pid, tmp_path / "dead.txt")


def test_cpu_meter_counts_this_process_and_skips_a_vanished_one() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    meter = _profile.CpuMeter({"me": os.getpid(), "gone": gone.pid})
    gone.wait()

    def burned() -> bool:
        sum(range(100_000))
        return meter.stop()["cpu_s"]["me"] > 0.05

    eventually(burned, timeout_s=30, interval_s=0, message="this process used CPU")
    usage = meter.stop()
    assert "gone" not in usage["cpu_s"] and usage["wall_s"] > 0
    assert "me " in _profile.format_cpu("test", usage)


def test_no_ray_leaves_ray_out_and_repeats_rotate_the_order() -> None:
    argv = ["--no-dask", "--no-ray"]
    runner = _Runner(build_parser().parse_args(argv), argv)
    assert list(runner.systems) == ["xpipe"]
    assert runner.skipped == {"dask": "--no-dask", "ray": "--no-ray"}
    assert runner.document["systems"] == {
        "xpipe": "measured", "dask": "skipped: --no-dask", "ray": "skipped: --no-ray",
    }  # fmt: skip
    # Every system takes every position once over as many repeats as there are systems.
    runner.systems = dict.fromkeys(["xpipe", "dask", "ray"], runner.systems["xpipe"])
    orders = [runner._order(repeat) for repeat in range(4)]
    assert orders == [["xpipe", "dask", "ray"], ["dask", "ray", "xpipe"], ["ray", "xpipe", "dask"],
                      ["xpipe", "dask", "ray"]]  # fmt: skip
    runner.systems = dict.fromkeys(["xpipe", "dask"], runner.systems["xpipe"])
    assert [runner._order(repeat) for repeat in range(2)] == [["xpipe", "dask"], ["dask", "xpipe"]]


def test_ray_temp_dir_falls_back_when_its_sockets_would_not_fit(tmp_path: Path, caplog) -> None:
    short = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    long = tmp_path / ("x" * 60)
    long.mkdir()
    try:
        assert Path(_ray._temp_dir(short)).parent == short
        with caplog.at_level("WARNING", logger="bench._ray"):
            fallback = Path(_ray._temp_dir(long))
        assert fallback.parent == Path(tempfile.gettempdir()) and fallback.name.startswith("xpipe-bench-ray-")
        assert "too long for Ray's unix sockets (over 40 chars)" in caplog.text
        assert not any(long.iterdir()), "the too-long attempt is removed"
        fallback.rmdir()
    finally:
        shutil.rmtree(short)


def test_ray_http_goes_to_a_refusing_loopback_proxy_only_meanwhile(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with _ray._loopback_http():
        assert os.environ["HTTP_PROXY"] == os.environ["HTTPS_PROXY"] == "http://127.0.0.1:9"
        assert "http_proxy" not in os.environ, "gRPC reads the lower-case one: it must stay untouched"
    assert "HTTP_PROXY" not in os.environ and os.environ["HTTPS_PROXY"] == "http://127.0.0.1:3128"


def _inet_connections(pids: set[int]) -> list[tuple[str, Any, Any]]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            found += [(proc.name(), c.laddr, c.raddr) for c in proc.net_connections(kind="inet")]
    return found


def _is_loopback(addr: Any) -> bool:
    return not addr or ipaddress.ip_address(addr.ip.removeprefix("::ffff:")).is_loopback


@pytest.mark.skipif(not _HAS_RAY, reason="ray is not installed (the bench extra)")
def test_ray_session_stays_on_loopback_and_leaves_nothing_behind() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    handler = signal.getsignal(signal.SIGTERM)
    token_file = Path.home() / ".ray" / "auth_token"
    had_token_file = token_file.exists()
    workdir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    try:
        with _ray.open_session(workdir) as session:
            import ray

            assert ray.get(session.add.remote(2, 3)) == 5
            pids = {p.pid for p in psutil.Process().children(recursive=True)} - before
            names = {psutil.Process(pid).name() for pid in pids}
            assert {"gcs_server", "raylet"} <= names, names
            connections = _inet_connections(pids | {os.getpid()})
            assert any(name == "gcs_server" for name, _, _ in connections), connections
            outside = [c for c in connections if not (_is_loopback(c[1]) and _is_loopback(c[2]))]
            assert not outside, f"Ray sockets off loopback: {outside}"
            assert [p.name for p in workdir.iterdir()][0].startswith("ray-")
            assert signal.getsignal(signal.SIGTERM) is handler, "Ray's own SIGTERM handler is undone"
        assert not list(workdir.iterdir()), "Ray's session files are removed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    eventually(lambda: not _alive(pids), timeout_s=30, message=f"Ray processes gone: {_alive(pids)}")
    assert had_token_file or not token_file.exists(), "Ray's token stays in the environment, not in ~/.ray"


@pytest.mark.skipif(not _HAS_RAY, reason="ray is not installed (the bench extra)")
def test_sigterm_while_ray_starts_stops_it_and_writes_what_was_measured(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as err_file:
        bench = subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--no-dask", "--scenarios", "roundtrip",
             "--out", str(tmp_path / "out")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
        )  # fmt: skip
    try:
        # Terminate as soon as Ray's raylet runs: ray.init has then replaced SIGTERM's handler.
        def ray_up() -> set[int]:
            assert bench.poll() is None, err.read_text()
            procs = psutil.Process(bench.pid).children(recursive=True)
            names = {p.pid: p.name() for p in procs}
            return set(names) if "raylet" in names.values() else set()

        pids = eventually(ray_up, timeout_s=90, interval_s=0.01, message="Ray started")
        bench.terminate()
        assert bench.wait(timeout=60) == 143, err.read_text()[-3000:]
    finally:
        bench.kill()
        bench.wait()
    eventually(lambda: not _alive(pids), timeout_s=30, message=f"Ray processes gone: {_alive(pids)}")
    doc = _only_json(tmp_path / "out")
    assert doc["error"] == "terminated by SIGTERM during roundtrip / ray / repeat 1", doc["error"]
    assert doc["scenarios"]["roundtrip"]["samples"]["xpipe"][0]["count"] == 30
