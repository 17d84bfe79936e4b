"""``make demo`` runs examples/demo.py: it must keep working as the README promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import child_env

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_the_demo_runs_its_pipelines_and_shows_a_failed_tasks_log(tmp_path):
    done = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=child_env())  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "total revenue 28657.50 EUR over 7 days" in out
    assert "day 0 metrics: {'orders_kept': 48.0}" in out
    assert "insights: top user ana of 3" in out
    assert "as expected, TASK_FAILURE: task 'fetch' failed with ConnectionError" in out
    log = out.split("its log:\n", 1)[1]
    assert log.startswith("==> task 'fetch' attempt 1 <==\ncalling the upstream API\n")
    assert "WARNING demo: no answer; giving up" in log
