"""Alert rules fed by the real state machine: events in, actions out, alerts raised (no I/O)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.unit.test_breaker import assigns, fail, machine, spec_of, submit
from xpipe.coordinator._alerting import Alerting
from xpipe.coordinator._alertsend import is_loopback_host
from xpipe.coordinator._alertstore import AlertStore
from xpipe.coordinator._events import CircuitOpened, Tick, WorkerConnected, WorkerLost
from xpipe.coordinator._recovery_codec import PICKLE_CODEC
from xpipe.coordinator._state import SchedulerState
from xpipe._proto import common_pb2 as pb
from xpipe.insights._robust import SENSITIVITY_Z


def test_the_failure_that_opens_a_circuit_reports_it_once_and_alerting_raises_circuit_open():
    s = machine()
    alerting = Alerting({"rules": {"task_failed": False, "run_failed": False}})
    for run_id in ("r1", "r2"):
        alerting.watch_run(run_id, spec_of("p", ["charge"], circuit="payments"))
        submit(s, run_id, spec_of("p", ["charge"], circuit="payments"), 1.0)
    sent = assigns(s.schedule(1.0))
    opened = []
    for key in sent:
        actions = s.handle(fail(sent[key].attempt, 1.5))
        opened += [a for a in actions if isinstance(a, CircuitOpened)]
        alerting.observe(actions, s, 1.5)
    assert opened == [CircuitOpened("payments", "r2", "charge", 2)]
    (alert,) = alerting.history()
    assert (alert.rule, alert.run_id, alert.task, alert.pipeline, alert.dedupe_key) == (
        "circuit_open", "r2", "charge", "p", "circuit_open:payments")  # fmt: skip


def test_a_lost_worker_is_reported_with_what_it_held():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0, validate=True, recovery_codec=PICKLE_CODEC)
    s.handle(WorkerConnected(0.0, "w1-id", "w1", "host", 2))
    submit(s, "r1", spec_of("p", ["a"], enabled=False), 0.0)
    s.schedule(0.0)
    out = s.handle(Tick(10.5))
    assert [a for a in out if isinstance(a, WorkerLost)] == [WorkerLost("w1-id", "w1", 10.5, 1)]
    alerting = Alerting({"rules": {}})
    alerting.observe(out, s, 10.5)
    (alert,) = alerting.history(rule="worker_lost")
    assert alert.worker == "w1" and "1 attempts requeued" in alert.summary
    off = Alerting({"rules": {"worker_lost": False}})
    off.observe(out, s, 10.5)
    assert off.history() == []


def test_without_any_config_alerting_is_inactive_and_watches_no_run():
    alerting = Alerting()
    alerting.watch_run("r1", spec_of("p", ["a"]))
    assert not alerting.active


def test_a_run_whose_alerting_config_is_bad_is_not_watched_and_the_reason_logged(caplog):
    alerting = Alerting()
    spec = spec_of("p", ["a"])
    spec.monitoring_json = '{"alerting": {"webhook": "ftp://x"}}'  # a client that skipped the SDK's checks
    alerting.watch_run("r1", spec)
    assert not alerting.active
    assert "run r1: its alerting config is refused" in caplog.text and "['webhook']: must be an http(s) URL" in caplog.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
     ("hooks.slack.com", False), ("10.0.0.1", False), ("localhost.example.com", False), ("", False)],
)  # fmt: skip
def test_loopback_hosts_are_told_without_resolving_names(host, loopback):
    assert is_loopback_host(host) is loopback


def test_the_alert_table_keeps_only_the_newest(tmp_path):
    from xpipe._proto import insights_pb2

    async def scenario():
        store = AlertStore(tmp_path / "a.db", cap=3)
        try:
            await store.put([insights_pb2.Alert(id=f"a{i}", rule="run_failed", at=float(i)) for i in range(5)])
            await store.put([insights_pb2.Alert(id="a4", rule="run_failed", at=4.0, summary="rewritten")])
            return await store.load()
        finally:
            await store.close()

    kept = asyncio.run(scenario())
    assert [a.id for a in kept] == ["a2", "a3", "a4"] and kept[-1].summary == "rewritten"


@pytest.mark.parametrize(
    ("channel", "target", "shown"),
    [("slack", "https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/services/…"),
     ("webhook", "http://user:pw@127.0.0.1:9000/hook?token=abc", "http://127.0.0.1:9000/hook"),
     ("email", "ops@example.com", "ops@example.com")],
)  # fmt: skip
def test_history_shows_targets_without_their_secrets(channel, target, shown):
    from xpipe.coordinator._alertsend import Route

    assert Route(channel, target).shown() == shown


def _spec(monitoring: dict) -> pb.PipelineSpec:
    return pb.PipelineSpec(name="p", monitoring_json=json.dumps(monitoring))


def test_a_runs_anomaly_sensitivity_sets_the_anomaly_rules_threshold():
    alerting = Alerting({"webhook": "http://127.0.0.1:9/hook"})
    assert alerting.cluster.anomaly["threshold"] == 5.0  # the rule's own default
    alerting.watch_run("high", _spec({"anomaly_detection": {"sensitivity": "high"}}))
    alerting.watch_run("low", _spec({"anomaly_detection": {"sensitivity": "low"}}))
    alerting.watch_run("off", _spec({"anomaly_detection": {"enabled": False, "sensitivity": "high"}}))
    alerting.watch_run("plain", _spec({}))
    explicit = {"anomaly_detection": {"sensitivity": "high"}, "alerting": {"rules": {"anomaly": {"threshold": 8}}}}
    alerting.watch_run("explicit", _spec(explicit))
    runs = alerting._runs
    assert runs["high"].anomaly["threshold"] == SENSITIVITY_Z["high"] == 3.0
    assert runs["low"].anomaly["threshold"] == SENSITIVITY_Z["low"] == 6.0
    assert runs["off"].anomaly is None and runs["off"].rules["anomaly"] is None
    assert runs["plain"] is alerting.cluster
    assert runs["explicit"].anomaly["threshold"] == 8
    assert alerting.cluster.anomaly["threshold"] == 5.0, "the cluster's own rule is untouched"
    assert runs["high"].routes == alerting.cluster.routes
