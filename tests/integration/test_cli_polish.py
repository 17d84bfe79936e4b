"""What a new user of the ``xpipe`` command meets (issue 16), on real processes.

``xpipe run`` says its run id at once, cancels (or asks) on Ctrl-C without a traceback,
prints progress lines when piped and a compact summary for big runs; failed tasks show
their exception type and traceback; a drained worker is ``drained``; ``xpipe graph``
draws a DAG; a refused connection fails fast; daemons log ISO 8601 times.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from tests.harness import REPO_ROOT, Cluster, child_env, eventually, free_port
from xpipe import Client

#: A CLI subprocess never runs longer than this in these tests.
CLI_TIMEOUT_S = 90
#: ``2026-11-30T03:50:12.345Z``
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def _xpipe(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpipe._cli", *argv], env=env or child_env(), capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, cwd=REPO_ROOT)  # fmt: skip


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text("from xpipe import Pipeline, Task\nfrom tests import helpers_tasks as ht\n" + body)
    return path


# ---------------------------------------------------------------------- Ctrl-C


#: ``xpipe run`` as a user starts it in a terminal's foreground. A command started in the
#: background of a shell without job control (as a CI runner may start the whole suite)
#: inherits SIGINT ignored, and Python then keeps ignoring it: make it Python's default again.
_FOREGROUND = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv[0] = 'xpipe'; runpy.run_module('xpipe._cli', run_name='__main__')")  # fmt: skip


def _start_run(script: Path, address: str, out_path: Path, *extra: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    with open(out_path, "w") as out:
        return subprocess.Popen([sys.executable, "-c", _FOREGROUND, "run", str(script), "--coordinator", address,
                                 *extra], stdin=stdin, stdout=out, stderr=subprocess.PIPE, text=True,
                                env=child_env(), cwd=REPO_ROOT)  # fmt: skip


def _started_run_id(out_path: Path, proc: subprocess.Popen) -> str:
    def run_id() -> str:
        if proc.poll() is not None:
            raise AssertionError(f"xpipe run exited early ({proc.returncode}): {proc.stderr.read()}")
        m = re.search(r"^run (\w+) of long started$", out_path.read_text(), re.M)
        if not m:
            raise LookupError("no run id printed yet")
        return m.group(1)

    return eventually(run_id, timeout_s=60, message="xpipe run printing the run id as the run starts")


def _finished(proc: subprocess.Popen) -> str:
    """The command's stderr once it exited; one that hangs is killed and its stderr shown."""
    try:
        return proc.communicate(timeout=CLI_TIMEOUT_S)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"xpipe run did not exit within {CLI_TIMEOUT_S}s; stderr: {proc.communicate()[1]}") from None


def _interrupt_when_running(client: Client, run_id: str, proc: subprocess.Popen) -> None:
    eventually(lambda: client.get_run(run_id).tasks[0].state == "RUNNING", timeout_s=30, message="the task running")
    proc.send_signal(signal.SIGINT)


def test_ctrl_c_cancels_when_stdin_is_not_a_terminal_asks_on_one_and_prints_no_traceback(tmp_path):
    script = _script(tmp_path, "long", "p = Pipeline('long')\np.add_task(Task('nap', ht.sleep, args=(120,)))\n")
    with Cluster(tmp_path, workers=1, slots=3) as cluster, Client(cluster.address) as client:
        # stdin not a terminal: Ctrl-C cancels the run.
        proc = _start_run(script, cluster.address, tmp_path / "out1.txt")
        try:
            run_id = _started_run_id(tmp_path / "out1.txt", proc)
            _interrupt_when_running(client, run_id, proc)
            err = _finished(proc)
        finally:
            proc.kill()
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert f"run {run_id}: cancelled" in err
        eventually(lambda: client.get_run(run_id).summary.state == "CANCELLED", timeout_s=20)

        # --no-cancel-on-interrupt: the run goes on, and the command says how to follow it.
        proc = _start_run(script, cluster.address, tmp_path / "out2.txt", "--no-cancel-on-interrupt")
        try:
            kept = _started_run_id(tmp_path / "out2.txt", proc)
            _interrupt_when_running(client, kept, proc)
            err = _finished(proc)
        finally:
            proc.kill()
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert f"xpipe status {kept}" in err
        assert client.get_run(kept).summary.state == "RUNNING"
        client.cancel(kept)

        # stdin a terminal: it asks, and "y" cancels.
        master, slave = pty.openpty()
        try:
            proc = _start_run(script, cluster.address, tmp_path / "out3.txt", stdin=slave)
            try:
                asked = _started_run_id(tmp_path / "out3.txt", proc)
                _interrupt_when_running(client, asked, proc)
                eventually(lambda: f"cancel run {asked}? [y/N]" in (tmp_path / "out3.txt").read_text(),
                           timeout_s=20, message="the question")  # fmt: skip
                os.write(master, b"y\n")
                err = _finished(proc)
            finally:
                proc.kill()
        finally:
            os.close(master)
            os.close(slave)
        assert proc.returncode == 130 and "Traceback" not in err, err
        eventually(lambda: client.get_run(asked).summary.state == "CANCELLED", timeout_s=20)


def test_sigterm_on_run_with_the_embedded_default_stops_its_processes(tmp_path):
    script = _script(tmp_path, "long", "p = Pipeline('long')\np.add_task(Task('nap', ht.sleep, args=(120,)))\n")
    env = child_env()
    env.pop("XPIPE_COORDINATOR", None)  # the embedded default
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xpipe._cli", "run", str(script)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)  # fmt: skip
    try:
        _started_run_id(tmp_path / "out.txt", proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # its coordinator and two workers
        proc.send_signal(signal.SIGTERM)
        err = _finished(proc)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"left running: {alive}"


# ---------------------------------------------------------------------- progress, summary, failures

BIG = """\
p = Pipeline('big')
p.add_tasks([Task(f"t{i}", ht.add, args=(i, 1)) for i in range(30)])
p.add_task(Task("boom", ht.fail_with_value_error, args=("bad row 7",), max_retries=0))
p.add_task(Task("nap", ht.sleep, args=(1.5,)))
"""


def test_run_and_status_show_progress_a_compact_summary_and_the_failed_tasks_traceback(tmp_path):
    script = _script(tmp_path, "big", BIG)
    with Cluster(tmp_path, workers=1, slots=4) as cluster:
        done = _xpipe("run", str(script), "--coordinator", cluster.address, "--progress-interval-s", "0.3")
        assert done.returncode == 1, done  # a task failed
        lines = done.stdout.splitlines()
        m = re.fullmatch(r"run (\w+) of big started", lines[0])
        assert m, lines[:3]
        run_id = m.group(1)
        progress = [line for line in lines if re.match(rf"\[\s*[\d.]+s\] run {run_id}: \w+, \d+/32 tasks done", line)]
        assert progress, done.stdout  # piped: a line every 0.3 s while the 1.5 s task runs
        assert f"run {run_id} of big: failed" in lines
        assert "  32 tasks: 1 failed, 31 succeeded" in lines
        task_rows = [line for line in lines if re.match(r"  t\d+ ", line)]
        assert len(task_rows) <= 4, task_rows  # no line per task past 20: the slowest 5 are nap and 4 others
        failed = next(i for i, line in enumerate(lines) if line.startswith("  boom "))
        assert "failed" in lines[failed] and "1 tries" in lines[failed] and "ValueError: bad row 7" in lines[failed]
        assert lines[failed + 1].strip() == "Traceback (most recent call last):"
        slowest = lines[lines.index("  slowest:") + 1]
        assert slowest.startswith("  nap ") and " s " in slowest  # 1.5 s, the slowest by far
        assert "Traceback" not in done.stderr

        verbose = _xpipe("run", str(script), "--coordinator", cluster.address, "--verbose",
                         "--progress-interval-s", "0")  # fmt: skip
        assert all(any(line.startswith(f"  t{i} ") for line in verbose.stdout.splitlines()) for i in range(30))
        assert not re.search(r"^\[\s*[\d.]+s\] run", verbose.stdout, re.M)  # --progress-interval-s 0: none

        as_json = _xpipe("run", str(script), "--coordinator", cluster.address, "--json")
        data = json.loads(as_json.stdout)  # the run id and progress go to stderr: stdout stays JSON
        assert re.search(rf"run {data['run_id']} of big started", as_json.stderr)
        boom = data["tasks"]["boom"]
        assert boom["exception_type"] == "ValueError" and "Traceback" in boom["traceback"]
        assert boom["error_type"] and boom["attempts"] == 1 and boom["duration_s"] >= 0

        status = _xpipe("status", run_id, "--coordinator", cluster.address)
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith("  boom "))
        assert "ValueError: bad row 7" in row and "1 tries" in row and " ms " in row
        assert "Traceback (most recent call last):" in status.stdout
        shown = json.loads(_xpipe("status", run_id, "--coordinator", cluster.address, "--json").stdout)
        assert shown["tasks"]["boom"]["exception_type"] == "ValueError"
        assert "raise ValueError(message)" in shown["tasks"]["boom"]["traceback"]
        assert shown["tasks"]["nap"]["duration_s"] >= 1.5 and shown["tasks"]["nap"]["attempts"] == 1
        full = _xpipe("status", run_id, "--coordinator", cluster.address, "--verbose")
        assert sum(1 for line in full.stdout.splitlines() if re.match(r"  t\d+ ", line)) == 30


# ---------------------------------------------------------------------- workers, logs


def test_a_drained_worker_is_drained_and_only_workers_all_lists_it(tmp_path):
    with Cluster(tmp_path, workers=2, slots=1) as cluster:
        drained = _xpipe("drain", "w1", "--coordinator", cluster.address)
        assert drained.returncode == 0 and "draining" in drained.stdout, drained
        assert cluster.workers["w1"].wait(timeout_s=30) == 0
        eventually(lambda: {w.name: w.state for w in cluster.list_workers()}["w1"] == "drained", timeout_s=20,
                   message="w1 shown as drained")  # fmt: skip
        live = json.loads(_xpipe("workers", "--coordinator", cluster.address, "--json").stdout)
        assert [(w["name"], w["state"]) for w in live] == [("w0", "ready")]
        every = json.loads(_xpipe("workers", "--all", "--coordinator", cluster.address, "--json").stdout)
        assert sorted((w["name"], w["state"]) for w in every) == [("w0", "ready"), ("w1", "drained")]
        text = _xpipe("workers", "--all", "--coordinator", cluster.address).stdout
        row = next(line for line in text.splitlines() if line.startswith("w0 "))
        assert re.search(r"cpu=\d", row) and re.search(r"memory=[\d.]+Gi", row), text
        assert "RESOURCES" in text.splitlines()[0] and any(line.startswith("w1 ") for line in text.splitlines())
        cluster_text = _xpipe("cluster", "--coordinator", cluster.address).stdout
        assert "unhealthy" not in cluster_text  # left as asked: not a sick worker

        coordinator_log = cluster.coordinator.log_text()
        assert "worker w1" in coordinator_log and "drained and left" in coordinator_log
        assert not re.search(r"worker w1 \(\S+\) lost", coordinator_log)
        # Every log line of the daemons starts with an ISO 8601 UTC time, never an epoch float.
        for proc in (cluster.coordinator, cluster.workers["w0"]):
            logged = [line for line in proc.log_text().splitlines()[1:] if " INFO " in line or " WARNING " in line]
            assert logged and all(ISO_RE.match(line) for line in logged), logged[:3]


# ---------------------------------------------------------------------- graph

GRAPH = """\
def one():
    return 1

def build():
    p = Pipeline("shapes")
    a = Task("extract", one)
    b = Task("clean", ht.add, depends_on=[a])
    c = Task("enrich", ht.add, depends_on=[a])
    p.add_tasks([a, b, c, Task("load", ht.add, depends_on=[b, c]), Task("audit", one)])
    return p

pipe = build()
"""


def test_graph_draws_a_pipeline_as_text_dot_and_svg(tmp_path):
    script = _script(tmp_path, "shapes", GRAPH)
    text = _xpipe("graph", str(script))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        "pipeline shapes: 5 tasks in 3 layers",
        "  [0] extract",
        "  [0] audit",
        "  [1]   clean  <- extract",
        "  [1]   enrich  <- extract",
        "  [2]     load  <- clean, enrich",
    ]
    dot = _xpipe("graph", f"{script}:build", "--format", "dot").stdout
    assert dot.startswith('digraph "shapes" {') and dot.rstrip().endswith("}")
    edges = set(re.findall(r'"(\w+)" -> "(\w+)";', dot))
    assert edges == {("extract", "clean"), ("extract", "enrich"), ("clean", "load"), ("enrich", "load")}
    svg = _xpipe("graph", f"{script}:pipe", "-f", "svg").stdout
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    nodes = [g.get("data-task") for g in root.iter(f"{ns}g") if g.get("class") == "node"]
    assert sorted(nodes) == ["audit", "clean", "enrich", "extract", "load"]
    assert len([p for p in root.iter(f"{ns}path") if p.get("class") == "edge"]) == 4
    x_of = {g.get("data-task"): float(re.search(r"translate\(([\d.]+)", g.get("transform")).group(1))
            for g in root.iter(f"{ns}g") if g.get("class") == "node"}  # fmt: skip
    assert x_of["extract"] == x_of["audit"] < x_of["clean"] == x_of["enrich"] < x_of["load"]  # layered

    missing = _xpipe("graph", f"{script}:nothing")
    assert missing.returncode == 1 and missing.stderr.strip() == f"xpipe graph: {script} has no object 'nothing'"
    bad = _xpipe("graph", str(script), "--format", "png")
    assert bad.returncode == 2 and "invalid choice: 'png'" in bad.stderr


# ---------------------------------------------------------------------- connecting


def test_a_refused_connection_fails_fast_naming_the_address(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    out = _xpipe("runs", "--coordinator", address)  # the CLI's default timeout is 10 s
    elapsed_s = time.monotonic() - started
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"no coordinator answered at {address} within 1s: connection refused" in out.stderr
    assert elapsed_s < 6.0  # 1 s plus interpreter start-up, not the 10 s timeout
    with Client(address) as client:  # the SDK's default is 30 s
        started = time.monotonic()
        with pytest.raises(Exception, match=f"{address} within 1s: connection refused"):
            client.list_runs()
        assert time.monotonic() - started < 2.0

    # XPIPE_CONNECT_TIMEOUT is the setting of the CLI, Client and PipelineManager alike.
    bad = _xpipe("runs", "--coordinator", address, env=child_env({"XPIPE_CONNECT_TIMEOUT": "soon"}))
    assert bad.returncode == 1 and "XPIPE_CONNECT_TIMEOUT='soon': expected a number of seconds >= 0" in bad.stderr
    shown = _xpipe("runs", "--help", env=child_env({"XPIPE_CONNECT_TIMEOUT": "3"}))
    assert "$XPIPE_CONNECT_TIMEOUT" in shown.stdout


# ---------------------------------------------------------------------- missing_dependencies


def test_pickled_code_needing_a_module_the_worker_lacks_fails_dependency_failure_naming_it(tmp_path):
    from xpipe import PipelineManager
    from xpipe._cli import load_pipeline
    from xpipe.errors import PipelineExecutionError

    here = tmp_path / "client"  # the workers run in tmp_path: this is not on their path
    here.mkdir()
    (here / "only_here.py").write_text("def twice(x):\n    return 2 * x\n")
    script = _script(here, "needs", "import only_here\n\ndef use():\n    return only_here.twice(21)\n\n"
                                       "p = Pipeline('needs')\np.add_task(Task('use', use, max_retries=0))\n")  # fmt: skip
    pipeline = load_pipeline(str(script))  # its functions travel by value, only_here by name
    with Cluster(tmp_path, workers=1, slots=1) as cluster, PipelineManager(coordinator=cluster.address) as pm:
        with pytest.raises(PipelineExecutionError) as caught:
            pm.execute_pipeline(pipeline, monitor=False, timeout_s=60)
    assert caught.value.error_type == "DEPENDENCY_FAILURE", caught.value
    assert caught.value.missing_dependencies == ["only_here"]
    assert caught.value.result.tasks["use"].missing_dependencies == ("only_here",)
