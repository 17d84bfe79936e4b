"""A real coordinator and worker started from one config file only, with an environment override."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import Proc, StopWaiting, child_env, eventually, free_port, terminate_all
from xpipe import Client


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment without any XPIPE_* of the test process: only what a test sets counts."""
    env = {k: v for k, v in child_env().items() if not k.startswith("XPIPE_")}
    env.update(extra or {})
    return env


def test_daemons_and_the_client_take_their_settings_from_one_file(tmp_path: Path):
    port = free_port()
    config = tmp_path / "xpipe.toml"
    config.write_text(f"""\
[coordinator]
listen = "127.0.0.1:{port}"
data_dir = "{tmp_path / 'data'}"
alert_loopback_only = true
log_level = "WARNING"

[coordinator.heartbeat]
interval_s = "500ms"
timeout_s = "5s"

[worker]
coordinator = "127.0.0.1:{port}"
name = "from-file"
slots = 3
grace_s = "5s"
import = ["tests.helpers_tasks"]

[client]
coordinator = "127.0.0.1:{port}"
connect_timeout = "20s"
""")
    procs = []
    try:
        coordinator = Proc("coordinator", [sys.executable, "-m", "xpipe.coordinator", "--config", str(config)],
                           log_dir=tmp_path / "logs", env=_clean_env(), cwd=tmp_path)  # fmt: skip
        procs.append(coordinator)
        # The worker gets its file from XPIPE_CONFIG, and its name from XPIPE_NAME over the file's.
        env = _clean_env({"XPIPE_CONFIG": str(config), "XPIPE_NAME": "from-env"})
        worker = Proc("worker", [sys.executable, "-m", "xpipe.worker"], log_dir=tmp_path / "logs", env=env, cwd=tmp_path)
        procs.append(worker)

        def registered():
            for proc in (coordinator, worker):
                if not proc.alive():
                    raise StopWaiting(f"{proc.name} exited with {proc.returncode}:\n{proc.log_tail()}")
            with Client(f"127.0.0.1:{port}", connect_timeout_s=5) as client:
                return [w for w in client.list_workers() if w.state != "lost"]

        eventually(registered, timeout_s=60, message="the worker did not register on the configured port")
        # The CLI finds the coordinator in [client] of the same file; nothing else is given.
        out = subprocess.run([sys.executable, "-m", "xpipe._cli", "workers", "--json", "--config", str(config)],
                             env=_clean_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
        workers = json.loads(out.stdout)
        assert [(w["name"], w["slots"]) for w in workers] == [("from-env", 3)]
        assert (tmp_path / "data").is_dir()  # the coordinator's data_dir from the file
    finally:
        terminate_all(procs)


def test_a_daemon_refuses_a_bad_file_in_one_line_with_status_2(tmp_path: Path):
    config = tmp_path / "xpipe.toml"
    config.write_text("[worker]\nslots = 4\ngrace_s = \"a while\"\n")
    out = subprocess.run([sys.executable, "-m", "xpipe.worker", "--config", str(config)], env=_clean_env(),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"xpipe-worker: key 'grace_s' in [worker] of {config}:3: expected a duration")
