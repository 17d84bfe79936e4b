"""Hot reload of the seed's script shape: ``python script.py`` with ``@pm.pipeline`` in ``__main__``.

The script runs as a real subprocess against a real cluster, enables hot reload, runs the
pipeline, then waits for a signal file; the test edits the script on disk (the nested task,
a top-level helper, then a syntax error), signals, and reads what the next run printed. The
script's top level must run once only: a reload re-defines the builder from the file, it
does not run the script again. Waits are polls with deadlines (the script's own wait for
the reload, the test's ``eventually`` on its output), never fixed sleeps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.harness import Cluster, Proc, StopWaiting, eventually

SCRIPT = '''
import sys
import time
from pathlib import Path

from xpipe import PipelineManager, task

print("the script's top level ran", flush=True)
pm = PipelineManager(coordinator=sys.argv[1])
SIGNALS = Path(sys.argv[2])
WAIT_S = 60.0


def scale(values):
    return [v * 10 for v in values]


@pm.pipeline("user_analytics")
def create_user_analytics_pipeline():
    """Create user analytics pipeline with decorators."""

    @task("extract_users")
    def extract_user_data():
        return [1, 2, 3]

    @task("analyze_behavior", depends_on=["extract_users"])
    def analyze_user_behavior(user_data):
        return scale(user_data)

    @task("generate_insights", depends_on=["analyze_behavior"])
    def generate_insights(behavior_data):
        return f"insights: {sum(behavior_data)}"

    return [extract_user_data, analyze_user_behavior, generate_insights]


def wait_for(condition, what):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for {what}")
        time.sleep(0.02)


def run(round_no):
    outputs = pm.execute_pipeline("user_analytics", monitor=False).outputs
    status = pm.hot_reload_status("user_analytics")
    print(f"round {round_no}: version={status.version} error={status.last_error} "
          f"output={outputs['generate_insights']}", flush=True)
    return status.version, status.last_error


if __name__ == "__main__":
    reloader = pm.enable_hot_reload("user_analytics", debounce_ms=50)
    seen = run(1)
    for round_no in (2, 3):
        # The test edits this file after reading the last round, then signals.
        wait_for((SIGNALS / f"go-{round_no}").exists, f"signal {round_no}")
        wait_for(lambda: (reloader.version, reloader.last_error) != seen, f"reload {round_no}")
        seen = run(round_no)
    pm.close()
    print("done", flush=True)
'''

ROUND_TIMEOUT_S = 60.0


def _save(path: Path, edits: dict[str, str]) -> None:
    """Edit as an editor saves: a new file renamed over the old, so no half-written file is read."""
    text = path.read_text()
    for old, new in edits.items():
        assert old in text, f"{old!r} is not in {path}"
        text = text.replace(old, new)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _line(proc: Proc, prefix: str) -> str | None:
    for line in proc.log_text().splitlines():
        if line.startswith(prefix):
            return line
    if not proc.alive():
        raise StopWaiting(f"the script exited without {prefix!r}:\n{proc.log_tail()}")
    return None


def test_the_seed_script_reloads_its_nested_task_and_keeps_the_last_good_version_on_a_syntax_error(
    tmp_path,
):
    script = tmp_path / "user_analytics.py"
    script.write_text(SCRIPT)
    signals = tmp_path / "signals"
    signals.mkdir()
    with Cluster(tmp_path / "cluster", workers=1) as cluster:
        proc = Proc(
            "script",
            [sys.executable, str(script), cluster.address, str(signals)],
            log_dir=tmp_path / "logs",
            cwd=tmp_path,
        )
        try:
            first = eventually(lambda: _line(proc, "round 1:"), timeout_s=ROUND_TIMEOUT_S, message="round 1")
            assert first == "round 1: version=1 error=None output=insights: 60"

            # The nested task, and a top-level helper it calls: one save.
            _save(script, {'f"insights: {': 'f"new insights: {', "v * 10": "v * 100"})
            (signals / "go-2").touch()
            second = eventually(lambda: _line(proc, "round 2:"), timeout_s=ROUND_TIMEOUT_S, message="round 2")
            assert second == "round 2: version=2 error=None output=new insights: 600"

            _save(script, {"return [1, 2, 3]": "return [1, 2,"})
            (signals / "go-3").touch()
            third = eventually(lambda: _line(proc, "round 3:"), timeout_s=ROUND_TIMEOUT_S, message="round 3")
            assert third.startswith(f"round 3: version=2 error=SyntaxError at {script}:")
            assert third.endswith("output=new insights: 600"), "the last good version ran"

            assert proc.wait(ROUND_TIMEOUT_S) == 0, proc.log_tail()
            log = proc.log_text()
            assert "done" in log.splitlines()
            assert log.count("the script's top level ran") == 1, "a reload must not run the script again"
        finally:
            proc.terminate()
