"""Alerting end to end: real coordinators and workers, real HTTP and SMTP receivers on loopback.

No test sends to any address but 127.0.0.1: the one external URL (the seed's Slack hook)
is given only to a coordinator running with ``--alert-loopback-only``, which drops it unsent.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests import helpers_tasks as ht
from tests.harness import Cluster, child_env, eventually, free_port
from xpipe import Pipeline, PipelineManager, Task
from xpipe.errors import PipelineValidationError

EXTERNAL_SLACK = "https://hooks.slack.com/services/T000/B000/XXXX"


class Receiver:
    """An HTTP server on a free loopback port that keeps every JSON POST by path.

    ``fail_first[path] = n``: the first ``n`` POSTs to ``path`` are answered 500.
    """

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.fail_first: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.posts.append((self.path, body))
                    left = receiver.fail_first.get(self.path, 0)
                    receiver.fail_first[self.path] = left - 1
                self.send_response(404 if self.path == "/gone" else 500 if left > 0 else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self, path: str) -> list[dict]:
        with self._lock:
            return [body for p, body in self.posts if p == path]


class Mailbox:
    """An aiosmtpd SMTP server on a free loopback port, keeping each message's text."""

    def __init__(self, *, password: str = ""):
        self.messages: list[str] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted)
        self.port = free_port()
        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
                mailbox.messages.append(envelope.content.decode("utf-8", "replace"))
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            accepted = auth_data.password.decode() == password
            mailbox.logins.append((auth_data.login.decode(), accepted))
            return AuthResult(success=accepted, handled=False)  # not handled: the server answers 535

        # Plain-text AUTH on loopback: the test checks the login, not TLS (aiosmtpd warns about it).
        auth = {"authenticator": authenticator, "auth_require_tls": False, "auth_required": True} if password else {}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **auth)

    def __enter__(self) -> Mailbox:
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


def alerts_cli(address: str, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "alerts", "--json", *args, "--coordinator", address],
                         env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["alerts"]


def failing_pipeline(name: str) -> Pipeline:
    p = Pipeline(name)
    p.add_task(Task("boom", ht.fail_with_value_error, args=("disk on fire",)))
    return p


def test_cluster_alerts_reach_every_channel_dedupe_worker_lost_and_survive_a_restart(tmp_path):
    with Receiver() as http, Mailbox() as mail:
        config = {
            "webhook": f"{http.url}/hook",
            "slack_webhook": f"{http.url}/slack",
            "pager_duty": {"url": f"{http.url}/pd", "routing_key": "rk-test"},
            "email_alerts": ["ops@example.com"],
            "smtp": {"host": "127.0.0.1", "port": mail.port, "from": "xpipe@example.com"},
        }
        path = tmp_path / "alerting.json"
        path.write_text(json.dumps(config))
        args = ["--alerting-config", str(path), "--heartbeat-timeout-s", "2", "--heartbeat-interval-s", "0.5"]
        with Cluster(tmp_path, workers=1, slots=1, coordinator_args=args) as c, \
                PipelineManager(coordinator=c.address) as pm:  # fmt: skip
            first = pm.execute_pipeline(failing_pipeline("nightly"), monitor=False, raise_on_failure=False, timeout_s=60)
            assert first.status == "failed"
            run_id = first.run_id

            def run_failed_hooks() -> list[dict]:
                return [b for b in http.bodies("/hook") if b["rule"] == "run_failed"]

            def run_failed_pages() -> list[dict]:
                return [b for b in http.bodies("/pd") if b["dedup_key"].startswith("run_failed:")]

            # task_failed alerts go out too, on every channel: wait for run_failed's own.
            eventually(
                lambda: run_failed_hooks() and run_failed_pages() and mail.messages
                and any(run_id in b["text"] for b in http.bodies("/slack")),
                timeout_s=20, message="the run_failed alert on every channel",
            )  # fmt: skip
            hook = run_failed_hooks()[0]
            assert hook["run_id"] == run_id and hook["pipeline"] == "nightly" and hook["severity"] == "critical"
            assert any(run_id in b["text"] for b in http.bodies("/slack"))
            pd = run_failed_pages()[0]
            assert run_id in pd["payload"]["summary"]
            assert pd["routing_key"] == "rk-test" and pd["event_action"] == "trigger"
            assert pd["dedup_key"] == "run_failed:nightly" and pd["payload"]["severity"] == "critical"
            assert pd["payload"]["source"] == "xpipe-coordinator"
            assert any(run_id in m and "ops@example.com" in m for m in mail.messages)

            # The same pipeline failing again within the dedupe window: counted, not sent again.
            second = pm.execute_pipeline(failing_pipeline("nightly"), monitor=False, raise_on_failure=False, timeout_s=60)
            assert second.status == "failed"

            def counted() -> dict | None:
                alerts = alerts_cli(c.address, "--rule", "run_failed")
                return alerts[0] if alerts and json.loads(alerts[0]["details_json"])["count"] == 2 else None

            alert = eventually(counted, timeout_s=20, message="the second failure counted on the first alert")
            assert alert["run_id"] == run_id and len(run_failed_hooks()) == 1
            assert {d["channel"]: d["status"] for d in alert["deliveries"]} == {
                "webhook": "delivered", "slack": "delivered", "email": "delivered", "pagerduty": "delivered"}
            assert all(d["attempts"] == 1 and d["delivered_at"] > 0 for d in alert["deliveries"])
            task_failed = alerts_cli(c.address, "--rule", "task_failed")
            assert len(task_failed) == 1 and task_failed[0]["task"] == "boom"
            assert "TASK_FAILURE: disk on fire" in task_failed[0]["summary"]

            c.workers["w0"].kill()
            lost = eventually(lambda: alerts_cli(c.address, "--rule", "worker_lost"), timeout_s=20,
                              message="a worker_lost alert for the SIGKILLed worker")  # fmt: skip
            assert lost[0]["worker"] == "w0" and lost[0]["severity"] == "critical"
            eventually(lambda: any(b["rule"] == "worker_lost" for b in http.bodies("/hook")), timeout_s=20,
                       message="worker_lost delivered to the webhook")  # fmt: skip
            before = alerts_cli(c.address)

            c.restart_coordinator(wait_for_workers=False)
            after = alerts_cli(c.address)
            assert [a["id"] for a in after] == [a["id"] for a in before]
            assert after[0]["rule"] == "worker_lost" and sorted(a["rule"] for a in after[1:]) == ["run_failed", "task_failed"]
            table = subprocess.run([sys.executable, "-m", "xpipe._cli", "alerts", "--coordinator", c.address],
                                   env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
            assert table.returncode == 0 and "run_failed" in table.stdout and "webhook:delivered" in table.stdout


def test_pipeline_alerting_retries_a_failing_receiver_and_watches_durations_and_metrics(tmp_path):
    with Receiver() as http, Cluster(tmp_path, workers=1, slots=2) as c, PipelineManager(coordinator=c.address) as pm:
        http.fail_first["/flaky"] = 2
        p = failing_pipeline("flaky-hook")
        p.enable_monitoring({"alerting": {"webhook": f"{http.url}/flaky", "rules": {"task_failed": False}}})
        result = pm.execute_pipeline(p, monitor=False, raise_on_failure=False, timeout_s=60)

        def delivered() -> dict | None:
            alerts = alerts_cli(c.address, "--rule", "run_failed")
            return alerts[0] if alerts and alerts[0]["deliveries"][0]["status"] == "delivered" else None

        alert = eventually(delivered, timeout_s=30, message="the webhook delivered on its third try")
        assert alert["run_id"] == result.run_id
        assert alert["deliveries"][0]["attempts"] == 3 and "HTTP 500" in alert["deliveries"][0]["last_error"]
        assert len(http.bodies("/flaky")) == 3
        assert alerts_cli(c.address, "--rule", "task_failed") == []  # turned off by the pipeline's rules

        rules = {"anomaly": {"min_samples": 3, "threshold": 5.0}, "run_slow": {"min_runs": 3, "factor": 2.0},
                 "metric_threshold": [{"metric": "rows", "below": 10}]}  # fmt: skip

        def watched(seconds: float, rows: float) -> Pipeline:
            q = Pipeline("watched")
            q.add_tasks([Task("work", ht.sleep, args=(seconds,)), Task("count", ht.record_rows, args=(rows,))])
            q.enable_monitoring({"alerting": {"webhook": f"{http.url}/watched", "rules": rules}})
            return q

        for _ in range(4):
            assert pm.execute_pipeline(watched(0.05, 100), monitor=False, timeout_s=60).succeeded
        assert http.bodies("/watched") == []
        slow = pm.execute_pipeline(watched(1.5, 5), monitor=False, timeout_s=60)
        assert slow.succeeded
        eventually(lambda: {b["rule"] for b in http.bodies("/watched")} == {"anomaly", "run_slow", "metric_threshold"},
                   timeout_s=20, message="anomaly, run_slow and metric_threshold alerts")  # fmt: skip
        by_rule = {b["rule"]: b for b in http.bodies("/watched")}
        assert all(b["run_id"] == slow.run_id for b in by_rule.values())
        assert by_rule["anomaly"]["task"] == "work" and json.loads(by_rule["anomaly"]["details_json"])["robust_z"] > 5
        assert json.loads(by_rule["metric_threshold"]["details_json"])["value"] == 5


def test_embedded_default_drops_external_targets_unsent(tmp_path):
    def explode():
        raise RuntimeError("embedded failure")

    with Receiver() as http, PipelineManager(workers=1, data_dir=tmp_path / "local") as pm:
        p = Pipeline("embedded")
        p.add_task(Task("explode", explode))
        p.enable_monitoring({"alerting": {"slack_webhook": EXTERNAL_SLACK, "webhook": f"{http.url}/local"}})
        result = pm.execute_pipeline(p, monitor=False, raise_on_failure=False, timeout_s=60)
        assert result.status == "failed"
        eventually(lambda: http.bodies("/local"), timeout_s=20, message="the loopback webhook delivered")

        def settled() -> dict | None:
            alerts = alerts_cli(pm.address, "--rule", "run_failed")
            return alerts[0] if alerts and all(d["status"] != "pending" for d in alerts[0]["deliveries"]) else None

        alert = eventually(settled, timeout_s=20, message="both deliveries settled")
        slack = next(d for d in alert["deliveries"] if d["channel"] == "slack")
        assert slack["status"] == "dropped" and slack["attempts"] == 0
        assert slack["target"] == "https://hooks.slack.com/services/…"  # the webhook's token is left out
        assert slack["last_error"] == "dropped: the embedded default delivers alerts only to loopback addresses"
        assert next(d for d in alert["deliveries"] if d["channel"] == "webhook")["status"] == "delivered"

        import grpc

        from xpipe._proto import insights_pb2, insights_pb2_grpc

        with grpc.insecure_channel(pm.address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                insights_pb2_grpc.InsightsServiceStub(channel).ListAlerts(
                    insights_pb2.ListAlertsRequest(rule="run_faild"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "rule 'run_faild' is unknown; known: run_failed," in refused.value.details()


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("bad.json", '{"webhook": "ftp://x", "rules": {}}', "alerting['webhook']: must be an http(s) URL"),
        ("bad.toml", '[rules]\nrun_slow = {factr = 3}\n', "alerting['rules']['run_slow']['factr']: unknown key"),
        ("bad2.json", '{"smtp": {"host": "127.0.0.1", "port": 0}}', "alerting['smtp']['port']: must be a port number"),
        ("bad3.json", '{"hooks": 1}', "alerting['hooks']: unknown key; known:"),
    ],
)
def test_bad_alerting_config_is_refused_at_start_naming_file_and_key(tmp_path, name, text, named):
    path = tmp_path / name
    path.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "xpipe.coordinator", "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
         str(tmp_path / "data"), "--alerting-config", str(path)],
        env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert f"--alerting-config {path}" in out.stderr and named in out.stderr, out.stderr


def test_enable_monitoring_checks_the_alerting_shape():
    p = Pipeline("checked")
    p.enable_monitoring({"alerting": {"slack_webhook": EXTERNAL_SLACK, "email_alerts": ["ops@company.com"],
                                      "pager_duty": True}})  # the seed's sample  # fmt: skip
    with pytest.raises(PipelineValidationError, match=r"\['alerting'\]\['rules'\]\['metric_threshold'\]\[0\]: needs a metric"):
        p.enable_monitoring({"alerting": {"rules": {"metric_threshold": [{"above": 3}]}}})
    with pytest.raises(PipelineValidationError, match=r"\['alerting'\]\['pager_duty'\]\['key'\]: unknown key"):
        p.enable_monitoring({"alerting": {"pager_duty": {"key": "x"}}})


def test_full_queue_drops_and_counts(tmp_path):
    from xpipe.coordinator._alerting import Alerting

    async def scenario(url: str):
        alerting = Alerting({"webhook": url}, queue_size=2)
        await alerting.start(tmp_path / "alerts.db")
        try:
            raised = [alerting.raise_alert(alerting.cluster, "worker_lost", f"w{i} lost", 1000.0 + i, target=f"w{i}")
                      for i in range(5)]  # fmt: skip
            assert [a.deliveries[0].status for a in raised] == ["pending"] * 2 + ["dropped"] * 3
            assert raised[4].deliveries[0].last_error == "dropped: the delivery queue is full (2 waiting)"
            assert alerting.deliverer.stats.dropped_queue_full == 3
            for _ in range(200):
                if all(a.deliveries[0].status != "pending" for a in raised):
                    break
                await asyncio.sleep(0.05)
            assert [a.deliveries[0].status for a in raised[:2]] == ["delivered"] * 2
            # A repeat of the same rule and target inside the window is counted, not raised.
            assert alerting.raise_alert(alerting.cluster, "worker_lost", "w0 again", 1010.0, target="w0") is None
            assert json.loads(raised[0].details_json)["count"] == 2 and alerting.deduplicated == 1
        finally:
            await alerting.stop()
        again = Alerting({"webhook": url})
        await again.start(tmp_path / "alerts.db")
        try:
            kept = again.history(limit=10)
            assert [a.summary for a in kept] == [f"w{i} lost" for i in reversed(range(5))]
            assert kept[-1].deliveries[0].status == "delivered" and json.loads(kept[-1].details_json)["count"] == 2
        finally:
            await again.stop()

    with Receiver() as http:
        asyncio.run(scenario(f"{http.url}/q"))
        assert len(http.bodies("/q")) == 2


def test_rate_limit_give_up_no_retry_on_4xx_and_unusable_routes_are_recorded(tmp_path):
    from xpipe.coordinator._alerting import Alerting

    async def settle(alerting, alerts):
        for _ in range(400):  # bounded wait for the delivery task (no fixed sleep decides anything)
            if all(d.status != "pending" for a in alerts for d in a.deliveries):
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"deliveries still pending: {alerts}")

    async def scenario(url: str):
        limited = Alerting({"webhook": f"{url}/ok", "rate_per_minute": 1})
        await limited.start()
        try:
            alerts = [limited.raise_alert(limited.cluster, "worker_lost", f"w{i}", 10.0 + i, target=f"w{i}") for i in range(2)]
            await settle(limited, alerts)
            assert [a.deliveries[0].status for a in alerts] == ["delivered", "dropped"]
            assert alerts[1].deliveries[0].last_error == "dropped: rate limit of 1 per minute to this webhook target"
        finally:
            await limited.stop()

        failing = Alerting({"webhook": f"{url}/down"}, backoff_initial_s=0.01)
        await failing.start()
        try:
            alert = failing.raise_alert(failing.cluster, "run_failed", "r failed", 1.0, target="p")
            await settle(failing, [alert])
            (delivery,) = alert.deliveries
            assert (delivery.status, delivery.attempts, delivery.delivered_at) == ("failed", 5, 0.0)
            assert delivery.last_error == f"RuntimeError: HTTP 500 from {url}/down"
        finally:
            await failing.stop()

        refused = Alerting({"webhook": f"{url}/gone"}, backoff_initial_s=0.01)
        await refused.start()
        try:
            alert = refused.raise_alert(refused.cluster, "run_failed", "r failed", 1.0, target="p")
            await settle(refused, [alert])
            assert (alert.deliveries[0].status, alert.deliveries[0].attempts) == ("failed", 1)
            assert alert.deliveries[0].last_error == f"PermanentDeliveryError: HTTP 404 from {url}/gone"
        finally:
            await refused.stop()

        unusable = Alerting({"email_alerts": ["ops@example.com"], "pager_duty": True})
        alert = unusable.raise_alert(unusable.cluster, "run_failed", "r failed", 1.0, target="p")
        assert [(d.channel, d.status, d.last_error) for d in alert.deliveries] == [
            ("email", "dropped", "dropped: no smtp server configured for e-mail alerts (alerting.smtp)"),
            ("pagerduty", "dropped", "dropped: pager_duty needs a routing_key (alerting.pager_duty)"),
        ]

    with Receiver() as http:
        http.fail_first["/down"] = 1_000
        asyncio.run(scenario(http.url))
        assert len(http.bodies("/ok")) == 1 and len(http.bodies("/down")) == 5


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_email_logs_in_with_the_password_file_and_a_wrong_password_fails(tmp_path):
    from xpipe.coordinator._alerting import Alerting

    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret\n")
    wrong_file = tmp_path / "wrong-password"
    wrong_file.write_text("guess\n")

    async def send(mail: Mailbox, secret_file) -> object:
        smtp = {"host": "127.0.0.1", "port": mail.port, "username": "xpipe", "password_file": str(secret_file)}
        alerting = Alerting({"email_alerts": ["ops@example.com"], "smtp": smtp}, backoff_initial_s=0.01)
        await alerting.start()
        try:
            alert = alerting.raise_alert(alerting.cluster, "run_failed", "run r-42 failed", 1.0, target="p", run_id="r-42")
            for _ in range(400):
                if alert.deliveries[0].status != "pending":
                    break
                await asyncio.sleep(0.025)
            return alert.deliveries[0]
        finally:
            await alerting.stop()

    with Mailbox(password="s3cret") as mail:
        good = asyncio.run(send(mail, password_file))
        assert (good.status, good.attempts) == ("delivered", 1)
        assert mail.logins == [("xpipe", True)] and "r-42" in mail.messages[0]
        bad = asyncio.run(send(mail, wrong_file))
        # Refused credentials are not retried: trying again cannot fix them.
        assert (bad.status, bad.attempts) == ("failed", 1) and "SMTPAuthenticationError: 535" in bad.last_error, bad
        assert len(mail.messages) == 1
