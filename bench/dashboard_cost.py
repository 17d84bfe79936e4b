"""The cost of watching: the wide scenario with the dashboard's run page open, and without.

Issue 15: "With that page open, the bench's wide figure stays within 5% of the same run
without it." One cluster (a coordinator with ``--http-listen`` and the bench's two
workers) runs the wide pipeline (10,000 no-op tasks) in alternating rounds: unwatched, then
watched by a real headless Chromium showing the run's page from the moment it is submitted.
Each round reports tasks/s (building the pipeline to the run's end, as ``wide`` times it,
without downloading the outputs) and the coordinator's CPU per task.

The browser runs on the same 2 cores as the cluster, where a viewer's browser would run on
a machine of its own. A watched round starts with the dashboard open on its runs list (as a
viewer keeps it) and opens the new run's page the moment it is submitted, by the app's own
route change; an unwatched round has no dashboard open. ``--browser same`` (the default) lets it compete for them as any
process does: the ratio then includes its rendering. ``--browser idle`` starts Chromium under
``SCHED_IDLE`` (every process it forks inherits it) in a session of its own whose scheduling
group has nice 19 (Linux autogroup), so it renders only on a core the cluster leaves idle:
the nearest this one machine comes to the viewer's own. It still follows the whole run (the
bench checks every cell is painted succeeded). The
coordinator's CPU per task, the cost the dashboard puts on the coordinator itself, is
reported either way.

``--viewer stream`` replaces the browser with a plain program reading the run page's event
stream: the server's whole share of a viewer, with no browser on these cores.

    python -m bench.dashboard_cost [--tasks 10000] [--rounds 3] [--viewer browser|stream]
                                   [--browser same|idle] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench import tasks
from bench._local import free_port, nice_session, sched_idle
from bench._xpipe import XpipeCluster, _wait_terminal, _warm_up

RESULTS = Path(__file__).resolve().parent / "results"


#: ``--viewer stream``: the page's event stream read by a plain program, no browser.
_READER = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=600) as r:
    for line in r:
        if line.startswith(b"event: end"):
            break
"""


def _one(cluster: XpipeCluster, n: int, page: Any, dashboard: str, *, stream: bool = False) -> dict[str, float]:
    from xpipe import Pipeline, Task

    pm = cluster.manager
    coordinator = psutil.Process(cluster.coordinator_pid)
    cpu0 = coordinator.cpu_times()
    start = time.perf_counter()
    p = Pipeline("wide")
    p.add_tasks([Task(f"t{i}", tasks.noop, args=(i,)) for i in range(n)])
    run_id = pm.submit(p)
    reader = None
    if page is not None:  # the viewer, on the runs list, opens the new run (the app's own route change)
        page.evaluate(f"location.hash = '#/runs/{run_id}'")
    elif stream:
        reader = subprocess.Popen([sys.executable, "-c", _READER, f"{dashboard}api/runs/{run_id}/events"])
    _wait_terminal(pm, run_id, 600.0)
    seconds = time.perf_counter() - start
    if reader is not None and reader.wait(60) != 0:
        raise RuntimeError(f"the event stream reader failed with status {reader.returncode}")
    cpu1 = coordinator.cpu_times()
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    if page is not None:  # the page really followed the run: every cell is drawn as succeeded
        page.wait_for_function(
            f"document.querySelector('#dag')?.xpipeDag?.drawnCount('succeeded') >= {n}", timeout=60_000
        )
    return {"tasks_per_s": n / seconds, "coordinator_cpu_us_per_task": cpu_s / n * 1e6}


def _idle_browser(pw: Any, chromium: str, profile: Path) -> tuple[subprocess.Popen, Any]:
    """Chromium under SCHED_IDLE in a session of its own (its group at nice 19), driven over CDP."""
    port = free_port()
    proc = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
         f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={port}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # SCHED_IDLE, inherited by every process it forks: it runs only on a core that nothing
        # else wants, the nearest this one machine comes to a viewer's machine of its own.
        preexec_fn=sched_idle,
    )  # fmt: skip
    try:
        nice_session(proc.pid)  # the whole session, renderers included
        deadline = time.monotonic() + 30
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        while True:
            try:
                with direct.open(f"http://127.0.0.1:{port}/json/version", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"chromium did not open its debugging port {port}") from None
                time.sleep(0.1)
        return proc, pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--viewer", choices=("browser", "stream"), default="browser",
        help="browser: Chromium shows the run page; stream: a plain program reads the page's event stream "
             "(the server's side of a viewer, without a browser on these cores)",
    )  # fmt: skip
    parser.add_argument(
        "--browser", choices=("same", "idle"), default="same",
        help="same: Chromium competes for the cores like any process; idle: it runs under SCHED_IDLE, "
             "in the cluster's idle time, as on a viewer's own machine",
    )  # fmt: skip
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("bench.dashboard_cost: no chromium on PATH (scripts/install_system_deps.sh installs it)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    samples: dict[str, list[dict[str, float]]] = {"unwatched": [], "watched": []}
    with tempfile.TemporaryDirectory(prefix="xpipe-bench-dash-") as tmp, sync_playwright() as pw:
        own: subprocess.Popen | None = None
        if args.browser == "idle":
            own, browser = _idle_browser(pw, chromium, Path(tmp) / "chromium")
        else:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            with XpipeCluster(Path(tmp), coordinator_args=["--http-listen", "127.0.0.1:0"]) as cluster:
                _warm_up(cluster.manager)
                dashboard = cluster.manager.client.cluster_status().dashboard_url
                page = browser.new_page()
                for round_ in range(args.rounds):
                    for mode in ("unwatched", "watched") if round_ % 2 == 0 else ("watched", "unwatched"):
                        browse = mode == "watched" and args.viewer == "browser"
                        if browse:  # the dashboard is open on its runs list before the run starts
                            page.goto(f"{dashboard}#/runs")
                            page.wait_for_selector("#runs", timeout=30_000)
                        sample = _one(cluster, args.tasks, page if browse else None, dashboard,
                                      stream=mode == "watched" and args.viewer == "stream")  # fmt: skip
                        if mode == "watched":
                            page.goto("about:blank")  # closes the run's event stream
                        samples[mode].append(sample)
                        print(f"[bench.dashboard_cost] round {round_ + 1} {mode}: "
                              f"{sample['tasks_per_s']:.0f} tasks/s, {sample['coordinator_cpu_us_per_task']:.0f} µs "
                              "coordinator CPU per task", flush=True)  # fmt: skip
        finally:
            browser.close()
            if own is not None:
                own.terminate()
                own.wait(10)
    summary = {
        mode: {key: statistics.median(s[key] for s in rows) for key in rows[0]} for mode, rows in samples.items()
    }
    ratio = summary["watched"]["tasks_per_s"] / summary["unwatched"]["tasks_per_s"]
    cpu_delta = summary["watched"]["coordinator_cpu_us_per_task"] - summary["unwatched"]["coordinator_cpu_us_per_task"]
    print(f"[bench.dashboard_cost] median tasks/s unwatched {summary['unwatched']['tasks_per_s']:.0f}, "
          f"watched {summary['watched']['tasks_per_s']:.0f} (ratio {ratio:.3f}); coordinator CPU per task "
          f"{cpu_delta:+.1f} µs with the page open")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out / f"{stamp}-dashboard-cost.json"
    path.write_text(json.dumps({"tasks": args.tasks, "rounds": args.rounds, "viewer": args.viewer, "browser": args.browser,
                                "samples": samples, "summary": summary, "watched_over_unwatched": ratio}, indent=2))  # fmt: skip
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
