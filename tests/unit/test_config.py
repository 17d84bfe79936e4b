"""One config file and ``XPIPE_*`` variables, resolved over the real parsers of the three binaries."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from xpipe import _cli
from xpipe._config import ConfigError, options_of, resolve
from xpipe._retry import parse_duration_s
from xpipe.coordinator import _main as coordinator_main
from xpipe.worker import _main as worker_main
from xpipe.worker._daemon import WorkerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = """\
# a fixture settings file for all three binaries
[coordinator]
listen = "127.0.0.1:7555"
retention = ["ci=1", "prod=30"]
lease_ttl_s = 5

[coordinator.heartbeat]
timeout_s = "20s"    # a sub-table: --heartbeat-timeout-s

[worker]
coordinator = "127.0.0.1:7555"
name = "from-file"
slots = 3
grace_s = "1min"
import = ["json", "csv"]
task_log_max_bytes = "2Mi"
allow_install = true
log_level = "WARNING"

[client]
coordinator = "127.0.0.1:7555"
connect_timeout = "5s"
token = "s3cret"
"""


def _line(key: str) -> int:
    """The line of ``key = ...`` in FIXTURE (1-based)."""
    return next(n for n, line in enumerate(FIXTURE.splitlines(), 1) if line.startswith(f"{key} ="))


def _parser(table: str) -> argparse.ArgumentParser:
    return {"coordinator": coordinator_main.build_parser, "worker": worker_main.build_parser,
            "client": _cli.build_parser}[table]()  # fmt: skip


def _parse(table: str, argv=(), env=None, text: str | None = None, tmp_path: Path | None = None):
    """Resolve like the binary does: file and env into defaults, then the flags."""
    argv = list(argv)
    if text is not None:
        path = tmp_path / "xpipe.toml"
        path.write_text(text)
        argv = ["--config", str(path), *argv]
    parser = _parser(table)
    if table == "client":
        return _cli_parse(argv, env or {})
    resolve(parser, table, argv, env or {})
    return parser.parse_args(argv)


def _cli_parse(argv, env):
    from xpipe._config import parse_args

    return parse_args(_cli.build_parser(), "client", ["workers", *argv], env)


def _error(table: str, text: str, tmp_path: Path, env=None) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve(_parser(table), table, ["--config", str(path)], env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- precedence


def test_flags_win_over_env_over_file_over_defaults(tmp_path):
    text = "[worker]\nslots = 3\nname = 'file-name'\nexecutor = 'thread'\n"
    assert _parse("worker").slots == (os.cpu_count() or 1)  # default
    assert _parse("worker", text=text, tmp_path=tmp_path).slots == 3  # file
    opts = _parse("worker", env={"XPIPE_SLOTS": "5"}, text=text, tmp_path=tmp_path)
    assert (opts.slots, opts.name, opts.executor) == (5, "file-name", "thread")  # env over file, file kept
    opts = _parse("worker", ["--slots", "7"], env={"XPIPE_SLOTS": "5", "XPIPE_NAME": "env-name"}, text=text,
                  tmp_path=tmp_path)  # fmt: skip
    assert (opts.slots, opts.name) == (7, "env-name")


def test_the_config_file_comes_from_xpipe_config_when_no_flag_names_one(tmp_path):
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text("[worker]\nslots = 11\n")
    two.write_text("[worker]\nslots = 12\n")
    parser = _parser("worker")
    resolve(parser, "worker", [], {"XPIPE_CONFIG": str(one)})
    assert parser.parse_args([]).slots == 11
    parser = _parser("worker")
    resolve(parser, "worker", ["--config", str(two)], {"XPIPE_CONFIG": str(one)})
    assert parser.parse_args(["--config", str(two)]).slots == 12


def test_a_fixture_file_sets_each_binary_from_its_own_table(tmp_path):
    c = _parse("coordinator", text=FIXTURE, tmp_path=tmp_path)
    assert (c.listen, c.heartbeat_timeout_s, c.lease_ttl_s) == ("127.0.0.1:7555", 20.0, 5)
    assert c.retention == ["ci=1", "prod=30"]
    w = _parse("worker", text=FIXTURE, tmp_path=tmp_path)
    assert (w.name, w.slots, w.grace_s, w.imports) == ("from-file", 3, 60.0, ["json", "csv"])
    assert (w.task_log_max_bytes, w.allow_install, w.log_level) == ("2Mi", True, "WARNING")
    assert worker_main.parse_log_cap(w.task_log_max_bytes) == 2 * 2**20  # the worker's own parser agrees
    client = _parse("client", text=FIXTURE, tmp_path=tmp_path)
    assert (client.coordinator, client.connect_timeout_s, client.token) == ("127.0.0.1:7555", 5.0, "s3cret")


def test_repeatable_flags_replace_the_file_list_and_env_lists_are_comma_separated(tmp_path):
    text = "[worker]\nimport = ['json', 'csv']\n"
    assert _parse("worker", ["--import", "os"], text=text, tmp_path=tmp_path).imports == ["os"]
    assert _parse("worker", env={"XPIPE_IMPORT": "a, b"}, text=text, tmp_path=tmp_path).imports == ["a", "b"]
    assert _parse("worker", text="[worker]\nimport = 'json'\n", tmp_path=tmp_path).imports == ["json"]
    assert _parse("worker").imports == []  # the parser's default list is not touched


def test_booleans_from_the_file_and_the_environment(tmp_path):
    assert _parse("worker", text="[worker]\nno_pickled_code = true\n", tmp_path=tmp_path).no_pickled_code is True
    assert _parse("worker", env={"XPIPE_ALLOW_INSTALL": "yes"}).allow_install is True
    assert _parse("worker", env={"XPIPE_ALLOW_INSTALL": "0"}).allow_install is False
    # env false over file true: env wins
    assert _parse("worker", env={"XPIPE_ALLOW_INSTALL": "off"}, text="[worker]\nallow_install = true\n",
                  tmp_path=tmp_path).allow_install is False  # fmt: skip
    with pytest.raises(ConfigError, match=r"XPIPE_ALLOW_INSTALL \(--allow-install\): expected a boolean"):
        resolve(_parser("worker"), "worker", [], {"XPIPE_ALLOW_INSTALL": "maybe"})


def test_durations_and_sizes_where_the_flag_takes_seconds_or_bytes(tmp_path):
    opts = _parse("coordinator", env={"XPIPE_HEARTBEAT_INTERVAL_S": "500ms", "XPIPE_RETENTION_INTERVAL_S": "2h"})
    assert (opts.heartbeat_interval_s, opts.retention_interval_s) == (0.5, 7200.0)
    assert _parse("worker", env={"XPIPE_GRACE_S": "45"}).grace_s == 45.0  # a plain number is still seconds
    text = "[worker]\ntask_memory_limit = '2GiB'\ntask_log_max_bytes = 65536\n"
    opts = _parse("worker", text=text, tmp_path=tmp_path)
    assert (opts.task_memory_limit, opts.task_log_max_bytes) == ("2GiB", "65536")
    assert worker_main._parse_size(opts.task_memory_limit, "--task-memory-limit") == 2 * 2**30
    # the client's connect timeout keeps its own words, and takes a duration too
    assert _parse("client", env={"XPIPE_CONNECT_TIMEOUT": "none"}).connect_timeout_s is None
    assert _parse("client", env={"XPIPE_CONNECT_TIMEOUT": "2min"}).connect_timeout_s == 120.0
    assert _parse("client", text="[client]\nconnect_timeout = 3\n", tmp_path=tmp_path).connect_timeout_s == 3.0


def test_flags_added_later_get_a_key_a_sub_table_and_a_variable_with_no_more_code(tmp_path):
    parser = _parser("coordinator")  # as the autoscaler's flags were added to it
    parser.add_argument("--later-mode", default="", choices=["", "a", "b"])
    parser.add_argument("--later-limit", type=int, default=0)
    parser.add_argument("--later-cooldown", type=parse_duration_s, default=300.0)
    path = tmp_path / "x.toml"
    path.write_text("[coordinator.later]\nmode = 'a'\nlimit = 50\ncooldown = '5min'\n")
    resolve(parser, "coordinator", ["--config", str(path)], {"XPIPE_LATER_LIMIT": "60"})
    opts = parser.parse_args(["--config", str(path)])
    assert (opts.later_mode, opts.later_limit, opts.later_cooldown) == ("a", 60, 300.0)


def test_the_autoscale_table_sets_the_autoscalers_flags(tmp_path):
    parser = _parser("coordinator")
    path = tmp_path / "x.toml"
    path.write_text("[coordinator.autoscale]\nprovider = 'local'\nmax_workers = 50\nscale_up_cooldown = '5min'\n")
    resolve(parser, "coordinator", ["--config", str(path)], {"XPIPE_AUTOSCALE_MAX_WORKERS": "60"})
    opts = parser.parse_args(["--config", str(path)])
    assert (opts.autoscale_provider, opts.autoscale_max_workers, opts.autoscale_scale_up_cooldown) == (
        "local", 60, 300.0)  # fmt: skip


# --------------------------------------------------------------------------- errors


def test_an_unknown_key_names_the_key_the_table_the_file_and_the_line(tmp_path):
    message = _error("worker", "[worker]\nname = 'x'\nslotz = 3\n", tmp_path)
    assert "'slotz'" in message and "[worker]" in message and f"{tmp_path / 'bad.toml'}:3" in message
    assert "did you mean 'slots'" in message
    message = _error("coordinator", "[coordinator.autoscale]\nprovidr = 'local'\n", tmp_path)
    assert "'providr' in [coordinator.autoscale]" in message and "--autoscale-providr" in message
    message = _error("coordinator", "[coordinator]\nlisten = '127.0.0.1:1'\nautoscale.providr = 'local'\n", tmp_path)
    assert "'providr' in [coordinator.autoscale]" in message and message.split(": ")[0].endswith("bad.toml:3")
    assert "unknown key or table 'workers'" in _error("worker", "[workers]\nslots = 1\n", tmp_path)
    # a subcommand's own option is not a [client] setting
    assert "xpipe has no option --limit" in _error("client", "[client]\nlimit = 5\n", tmp_path)


@pytest.mark.parametrize(("table", "text", "expected"), [
    ("worker", "[worker]\nslots = '3'\n", "key 'slots' in [worker] of {f}:2: expected an integer, got str '3'"),
    ("worker", "[worker]\nslots = 2.5\n", "expected an integer, got float 2.5"),
    ("worker", "[worker]\nname = 5\n", "key 'name' in [worker] of {f}:2: expected a string, got int 5"),
    ("worker", "[worker]\ngrace_s = true\n", "expected a number, got the boolean true"),
    ("worker", "[worker]\nallow_install = 'yes'\n", "expected a boolean (true or false), got str 'yes'"),
    ("worker", "[worker]\nencryption_key_file = 3\n", "expected a path (string), got int 3"),
    ("worker", "[worker]\nexecutor = 'fork'\n", "'fork' is not one of process, thread"),
    ("worker", "[worker]\nimport = [1]\n", "expected a string, got int 1"),
    ("coordinator", "[coordinator]\nheartbeat = 3\n", "unknown key 'heartbeat'"),
    ("coordinator", "[coordinator]\nlease_ttl_s = '1.5s'\n", "expected a whole number of seconds, got 1.5"),
])  # fmt: skip
def test_a_wrong_type_names_the_key_the_table_and_the_file(tmp_path, table, text, expected):
    assert expected.format(f=tmp_path / "bad.toml") in _error(table, text, tmp_path)


def test_a_bad_duration_or_size_names_the_key_and_the_file(tmp_path):
    message = _error("worker", "[worker]\ngrace_s = '3 fortnights'\n", tmp_path)
    assert "key 'grace_s' in [worker]" in message and "expected a duration" in message and "'30s'" in message
    message = _error("worker", "[worker]\ntask_memory_limit = '2 gallons'\n", tmp_path)
    assert "key 'task_memory_limit' in [worker]" in message and "expected a size" in message and "Gi" in message
    assert "expected a size" in _error("worker", "[worker]\ntask_log_max_bytes = -1\n", tmp_path)
    with pytest.raises(ConfigError, match=r"environment variable XPIPE_GRACE_S \(--grace-s\): expected a duration"):
        resolve(_parser("worker"), "worker", [], {"XPIPE_GRACE_S": "soon"})


def test_unreadable_or_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*missing.toml': No such file"):
        resolve(_parser("worker"), "worker", ["--config", str(tmp_path / "missing.toml")], {})
    assert "not valid TOML" in _error("worker", "[worker\n", tmp_path)
    text = "[coordinator]\nheartbeat_timeout_s = 1\n[coordinator.heartbeat]\ntimeout_s = 2\n"
    assert "'heartbeat_timeout_s' is set twice in [coordinator]" in _error("coordinator", text, tmp_path)
    message = _error("client", "[client]\nconnect_timeout = 1\nconnect_timeout_s = 2\n", tmp_path)
    assert "sets the same option as 'connect_timeout'" in message


def test_the_daemons_exit_2_with_one_line_on_a_bad_setting(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker]\nslots = 'many'\n")
    with pytest.raises(SystemExit) as info:
        worker_main.main(["--config", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("xpipe-worker: key 'slots' in [worker] of ")
    bad.write_text("[coordinator]\nlisten = 7400\n")
    with pytest.raises(SystemExit) as info:
        coordinator_main.main(["--config", str(bad)])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("xpipe-coordinator: key 'listen' in [coordinator]")


# --------------------------------------------------------------------------- existing variables


def test_existing_variables_agree_with_the_rule():
    names = {o.key: o.env_names()[0] for o in options_of(_parser("worker"))}
    assert names["coordinator"] == "XPIPE_COORDINATOR" and names["token"] == "XPIPE_TOKEN"
    assert names["tls_ca"] == "XPIPE_TLS_CA" and names["metrics_listen"] == "XPIPE_METRICS_LISTEN"
    assert names["encryption_key_file"] == "XPIPE_ENCRYPTION_KEY_FILE"
    client = {o.key: o.env_names()[0] for o in options_of(_cli_parse([], {}).config_resolution.options_parser)}
    assert client["connect_timeout"] == "XPIPE_CONNECT_TIMEOUT" and client["coordinator"] == "XPIPE_COORDINATOR"
    opts = _parse("worker", env={"XPIPE_TOKEN": "t", "XPIPE_COORDINATOR": "127.0.0.1:9"})
    assert (opts.token, opts.coordinator) == ("t", "127.0.0.1:9")


def test_the_coordinator_does_not_take_a_clients_tls_files_and_a_worker_not_its_parents_id():
    env = {"XPIPE_TLS_CERT": "/client.pem", "XPIPE_TLS_KEY": "/client.key", "XPIPE_TLS_CA": "/ca.pem",
           "XPIPE_WORKER_ID": "parent-1"}  # fmt: skip
    coordinator = _parse("coordinator", env=env)
    assert (coordinator.tls_cert, coordinator.tls_key, coordinator.tls_ca) == ("", "", "")
    worker = _parse("worker", env=env)
    assert worker.worker_id == "" and worker.tls_cert == "/client.pem"  # the worker is a client of TLS


def test_a_task_running_xpipe_reads_only_what_its_worker_exported(tmp_path, monkeypatch):
    """The worker exports its address and credentials; ``xpipe`` in a task uses them as its client settings."""
    task_env = dict(os.environ)
    monkeypatch.setattr(os, "environ", task_env)  # export_for_tasks writes here, not into the test process
    for name in [k for k in task_env if k.startswith("XPIPE_")]:
        del task_env[name]
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")  # only its path travels
    from xpipe.security._tls import TLSConfig

    worker_main.export_for_tasks(WorkerConfig(coordinators=("127.0.0.1:7400",), worker_id="w-1", token="tok",
                                              tls=TLSConfig(ca=str(ca))))  # fmt: skip
    assert {"XPIPE_COORDINATOR", "XPIPE_WORKER_ID", "XPIPE_TOKEN", "XPIPE_TLS_CA"} <= set(task_env)
    opts = _cli_parse([], task_env)
    assert (opts.coordinator, opts.token, opts.tls_ca) == ("127.0.0.1:7400", "tok", str(ca))
    layered = opts.config_resolution.layered
    assert set(layered) == {"coordinator", "token", "tls_ca"}  # XPIPE_WORKER_ID is nothing to the client
    assert _parse("worker", env=task_env).worker_id == ""  # nor to a worker a task would start


# --------------------------------------------------------------------------- xpipe config show


def _show(argv, env, capsys, monkeypatch) -> str:
    for name in [k for k in os.environ if k.startswith("XPIPE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _cli.main(["config", "show", *argv]) == 0
    return capsys.readouterr().out


def test_config_show_says_where_each_daemon_setting_came_from(tmp_path, capsys, monkeypatch):
    path = tmp_path / "xpipe.toml"
    path.write_text(FIXTURE)
    out = _show(["--config", str(path), "--for", "worker", "--json", "--", "--name", "flagged"],
                {"XPIPE_SLOTS": "5"}, capsys, monkeypatch)  # fmt: skip
    shown = json.loads(out)
    assert shown["table"] == "worker" and shown["file"] == str(path)
    rows = {r["key"]: r for r in shown["settings"]}
    assert rows["name"]["value"] == "flagged" and rows["name"]["source"] == "flag --name"
    assert rows["slots"]["value"] == 5 and rows["slots"]["source"] == "env XPIPE_SLOTS"
    assert rows["grace_s"]["value"] == 60.0 and rows["grace_s"]["source"] == f"file {path}:{_line('grace_s')}"
    assert rows["executor"] == {"key": "executor", "flag": "--executor", "env": "XPIPE_EXECUTOR",
                                "value": "process", "source": "default"}  # fmt: skip
    assert rows["worker_id"]["env"] is None  # the exception, shown as such
    out = _show(["--config", str(path), "--for", "coordinator"], {}, capsys, monkeypatch)
    assert "heartbeat_timeout_s = 20.0" in out and f"# file {path}:{_line('timeout_s')}" in out
    assert 'listen = "127.0.0.1:7555"' in out


def test_config_show_for_the_client_masks_the_token_and_names_flags(tmp_path, capsys, monkeypatch):
    path = tmp_path / "xpipe.toml"
    path.write_text(FIXTURE)
    out = _show(["--config", str(path), "--coordinator", "127.0.0.1:1"], {"XPIPE_NAMESPACE": "team"}, capsys,
                monkeypatch)  # fmt: skip
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert lines["coordinator"].split("#")[-1].strip() == "flag --coordinator"
    assert lines["namespace"].startswith('namespace = "team"') and "env XPIPE_NAMESPACE" in lines["namespace"]
    assert lines["token"].startswith('token = "***"') and "s3cret" not in out
    assert lines["connect_timeout"].startswith("connect_timeout = 5.0")
    assert lines["connect_timeout"].endswith(f"file {path}:{_line('connect_timeout')}")


def test_config_show_reports_a_bad_file_in_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text("[worker]\nslots = 'x'\n")
    with pytest.raises(SystemExit, match=r"xpipe config show: key 'slots' in \[worker\]"):
        _show(["--config", str(path), "--for", "worker"], {}, capsys, monkeypatch)


# --------------------------------------------------------------------------- the shipped example

DEPLOY_EXAMPLE = REPO_ROOT / "deploy" / "etc" / "xpipe.toml"


@pytest.mark.skipif(not DEPLOY_EXAMPLE.exists(), reason="deploy/etc/xpipe.toml is not in this tree yet")
@pytest.mark.parametrize("table", ["coordinator", "worker", "client"])
def test_the_deploy_example_is_a_valid_config_for_each_binary(table):
    argv = ["--config", str(DEPLOY_EXAMPLE)]
    if table == "client":
        opts = _cli_parse(argv, {})
    else:
        parser = _parser(table)
        resolve(parser, table, argv, {})
        opts = parser.parse_args(argv)
    assert opts.config == str(DEPLOY_EXAMPLE)


def test_the_embedded_default_does_not_read_the_operators_config_file(tmp_path, monkeypatch):
    """``$XPIPE_CONFIG`` names the operator's cluster (an etcd store, TLS...); the embedded one has its own flags."""
    from xpipe._local import LocalCluster

    monkeypatch.setenv("XPIPE_CONFIG", str(tmp_path / "cluster.toml"))
    monkeypatch.setenv("XPIPE_LABELS", "zone=a")  # a plain setting variable still reaches its daemons
    env = LocalCluster(workers=1, data_dir=tmp_path)._env()
    assert "XPIPE_CONFIG" not in env and env["XPIPE_LABELS"] == "zone=a"
