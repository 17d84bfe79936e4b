"""``xpipe run --otlp-endpoint``: the CLI's submit starts the run's trace like the SDK's."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import Cluster, child_env, eventually
from tests.integration.test_tracing import receiver  # noqa: F401 - the fixture

SCRIPT = (
    "from xpipe import Pipeline, Task\n"
    "def one():\n    return 1\n"
    "p = Pipeline('traced_cli')\n"
    "p.add_tasks([Task('one', one)])\n"
)


def _xpipe(*args: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpipe._cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)  # fmt: skip


def test_xpipe_run_with_otlp_endpoint_exports_the_run_span(tmp_path, receiver):  # noqa: F811
    got, endpoint = receiver
    script = tmp_path / "flow.py"
    script.write_text(SCRIPT)
    with Cluster(tmp_path, workers=1) as cluster:
        env = child_env({"XPIPE_COORDINATOR": cluster.address})
        done = _xpipe("run", f"{script}:p", "--json", "--otlp-endpoint", endpoint, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "succeeded"
    (root,) = eventually(lambda: got.named("run traced_cli"), timeout_s=10, message="the CLI's run span")
    assert root.parent_id == ""  # the trace starts at the CLI


def test_a_bad_otlp_endpoint_is_one_line_naming_it(tmp_path):
    done = _xpipe("runs", "--coordinator", "127.0.0.1:9", "--otlp-endpoint", "not an endpoint", env=child_env(),
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert "otlp_endpoint 'not an endpoint' is not HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr
