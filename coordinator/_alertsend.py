"""Alert delivery: channels (Slack, webhook, e-mail, PagerDuty) and the queue that feeds them.

Delivery never blocks scheduling: the engine's loop only puts a delivery on a bounded
queue (a full queue drops it, counted and recorded as ``dropped``). One asyncio task takes
deliveries off the queue and runs each in its own tracked task: a channel is a blocking
function (urllib, smtplib) run in a thread, retried with exponential backoff, limited to
so many sends per minute per channel and target. A failure that trying again cannot fix
(refused SMTP credentials, an HTTP 4xx other than 408 and 429) is not retried.

Channels are a registry keyed by name (:data:`SENDERS`): adding one touches this table.
With ``loopback_only`` (the embedded default of ``xpipe.PipelineManager()``), a target
whose host is not a loopback address is dropped without any traffic, not even a DNS
lookup: only ``localhost`` and loopback IP literals pass.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from google.protobuf.json_format import MessageToDict
from xpipe._proto import insights_pb2

__all__ = ["Deliverer", "LOOPBACK_ONLY_REASON", "PermanentDeliveryError", "Route", "SENDERS", "is_loopback_host"]

log = logging.getLogger(__name__)

#: Why a target is dropped under ``--alert-loopback-only``.
LOOPBACK_ONLY_REASON = "dropped: the embedded default delivers alerts only to loopback addresses"
#: How long one send may take before it counts as failed.
SEND_TIMEOUT_S = 10.0
#: Sends in flight at once (each holds a thread while it waits on the network).
MAX_CONCURRENT_SENDS = 4
#: PagerDuty's severities, by ours.
_PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


@dataclass(frozen=True, slots=True)
class Route:
    """One place an alert goes.

    Attributes:
        channel: a :data:`SENDERS` key (slack | webhook | email | pagerduty).
        target: the URL or e-mail address it is sent to (a Slack webhook's path is its
            secret: history shows :meth:`shown`).
        settings: what the channel needs beyond the target (smtp table, routing key).
        problem: set when the route cannot deliver (no smtp server, no routing key): its
            deliveries are recorded as ``dropped`` with this reason.
    """

    channel: str
    target: str
    settings: tuple[tuple[str, Any], ...] = ()
    problem: str = ""

    def shown(self) -> str:
        """The target as history shows it: no credentials, query, or Slack webhook token."""
        if self.channel == "email":
            return self.target
        parts = urlsplit(self.target)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        path = parts.path
        if self.channel == "slack":  # the path after /services/ is the webhook's secret
            path = "/".join(path.split("/")[:2]) + "/…" if path.count("/") > 1 else path
        return f"{parts.scheme}://{host}{path}"

    def host(self) -> str:
        if self.channel == "email":
            return str(dict(self.settings).get("host", ""))
        return urlsplit(self.target).hostname or ""


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal; never resolves a name (that would be traffic)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _alert_dict(alert: insights_pb2.Alert) -> dict[str, Any]:
    body = MessageToDict(alert, preserving_proto_field_name=True)
    body.pop("deliveries", None)
    return body


class PermanentDeliveryError(RuntimeError):
    """A send that trying again cannot fix (refused credentials, HTTP 4xx but 408/429): not retried."""


def _post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as reply:  # noqa: S310 (http(s) only, checked)
            reply.read()
    except urllib.error.HTTPError as exc:
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise (PermanentDeliveryError if permanent else RuntimeError)(f"HTTP {exc.code} from {url}") from None


def _send_slack(route: Route, alert: insights_pb2.Alert) -> None:
    _post_json(route.target, {"text": f"[{alert.severity}] {alert.summary} (xpipe alert {alert.id}, {alert.rule})"})


def _send_webhook(route: Route, alert: insights_pb2.Alert) -> None:
    _post_json(route.target, _alert_dict(alert))


def _send_pagerduty(route: Route, alert: insights_pb2.Alert) -> None:
    settings = dict(route.settings)
    _post_json(route.target, {
        "routing_key": settings["routing_key"],
        "event_action": "trigger",
        "dedup_key": alert.dedupe_key,
        "payload": {"summary": alert.summary, "source": "xpipe-coordinator",
                    "severity": _PAGERDUTY_SEVERITY.get(alert.severity, "error")},
    })  # fmt: skip


def _send_email(route: Route, alert: insights_pb2.Alert) -> None:
    smtp = dict(route.settings)
    message = EmailMessage()
    message["Subject"] = f"[xpipe {alert.severity}] {alert.summary}"[:200]
    message["From"] = smtp.get("from", "xpipe@localhost")
    message["To"] = route.target
    message.set_content(
        f"{alert.summary}\n\nrule: {alert.rule}\nrun: {alert.run_id}\npipeline: {alert.pipeline}\n"
        f"task: {alert.task}\nworker: {alert.worker}\nalert: {alert.id}\n\n{alert.details_json}\n"
    )
    with smtplib.SMTP(smtp["host"], smtp.get("port", 25), timeout=SEND_TIMEOUT_S) as client:
        if smtp.get("starttls"):
            client.starttls(context=ssl.create_default_context())
        if smtp.get("username"):
            password = Path(smtp["password_file"]).read_text().strip() if smtp.get("password_file") else ""
            try:
                client.login(smtp["username"], password)
            except smtplib.SMTPAuthenticationError as exc:
                raise PermanentDeliveryError(f"SMTPAuthenticationError: {exc.smtp_code} {exc.smtp_error!r}") from None
        client.send_message(message)


#: channel name -> a blocking send that raises on failure.
SENDERS: dict[str, Callable[[Route, insights_pb2.Alert], None]] = {
    "slack": _send_slack,
    "webhook": _send_webhook,
    "email": _send_email,
    "pagerduty": _send_pagerduty,
}


@dataclass(slots=True)
class _Bucket:
    """Sends of one channel and target in the current minute."""

    minute_start: float = 0.0
    sent: int = 0


@dataclass(slots=True)
class DeliveryStats:
    """Counters for tests and operators."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped_queue_full: int = 0
    dropped_rate_limited: int = 0
    dropped_not_loopback: int = 0
    retries: int = 0
    per_channel: collections.Counter = field(default_factory=collections.Counter)


class Deliverer:
    """The delivery queue and its worker task.

    Args:
        changed: called (on the event loop) with an alert whose deliveries changed, so it
            is persisted.
        queue_size: deliveries waiting at most; more are dropped.
        tries: sends of one delivery at most; the waits between them double from
            ``backoff_initial_s`` up to ``backoff_max_s``.
        rate_per_minute: sends per channel and target per minute; more are dropped.
        loopback_only: drop targets that are not loopback addresses, unsent.
    """

    def __init__(
        self, changed: Callable[[insights_pb2.Alert], None], *, queue_size: int = 1000, tries: int = 5,
        backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0, rate_per_minute: int = 60,
        loopback_only: bool = False,
    ):  # fmt: skip
        self._changed = changed
        self.queue_size = queue_size
        self.tries = tries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.rate_per_minute = rate_per_minute
        self.loopback_only = loopback_only
        self.stats = DeliveryStats()
        self._queue: asyncio.Queue | None = None
        self._runner: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def start(self) -> None:
        if self._runner is None:
            self._queue = asyncio.Queue(self.queue_size)
            self._runner = asyncio.create_task(self._run(), name="xpipe-alert-delivery")

    async def stop(self) -> None:
        """Cancel the worker and sends in flight (idempotent); their deliveries stay ``pending``."""
        tasks = [t for t in (self._runner, *self._sending) if t is not None]
        self._runner = None
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("alert delivery task ended with an error", exc_info=result)

    def offer(self, alert: insights_pb2.Alert, route: Route) -> None:
        """Add a delivery of ``alert`` to ``route`` (never waits; drops when it cannot queue)."""
        delivery = alert.deliveries.add(channel=route.channel, target=route.shown(), status="pending")
        index = len(alert.deliveries) - 1
        if route.problem:
            delivery.status, delivery.last_error = "dropped", route.problem
            return
        if self.loopback_only and not is_loopback_host(route.host()):
            delivery.status, delivery.last_error = "dropped", LOOPBACK_ONLY_REASON
            self.stats.dropped_not_loopback += 1
            return
        if self._queue is None:
            delivery.status, delivery.last_error = "dropped", "dropped: alert delivery is not running"
            return
        try:
            self._queue.put_nowait((alert, index, route))
        except asyncio.QueueFull:
            self.stats.dropped_queue_full += 1
            delivery.status = "dropped"
            delivery.last_error = f"dropped: the delivery queue is full ({self.queue_size} waiting)"
            log.warning("alert %s to %s dropped: delivery queue full (%d)", alert.id, route.channel, self.queue_size)
            return
        self.stats.queued += 1

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._deliver(*item), name=f"xpipe-alert-{item[0].id}")
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("alert delivery failed unexpectedly", exc_info=task.exception())

    def _take_token(self, route: Route, now: float) -> bool:
        bucket = self._buckets.setdefault((route.channel, route.target), _Bucket(now))
        if now - bucket.minute_start >= 60.0:
            bucket.minute_start, bucket.sent = now, 0
        if bucket.sent >= self.rate_per_minute:
            return False
        bucket.sent += 1
        return True

    async def _deliver(self, alert: insights_pb2.Alert, index: int, route: Route) -> None:
        delivery = alert.deliveries[index]
        if not self._take_token(route, time.monotonic()):
            self.stats.dropped_rate_limited += 1
            delivery.status = "dropped"
            delivery.last_error = f"dropped: rate limit of {self.rate_per_minute} per minute to this {route.channel} target"
            self._changed(alert)
            return
        send = SENDERS[route.channel]
        wait_s = self.backoff_initial_s
        for attempt in range(1, self.tries + 1):
            delivery.attempts = attempt
            try:
                await asyncio.wait_for(asyncio.to_thread(send, route, alert), SEND_TIMEOUT_S + 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one send is that delivery's, retried
                delivery.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.info("alert %s to %s %s: try %d of %d failed: %s", alert.id, route.channel, route.target,
                         attempt, self.tries, delivery.last_error)  # fmt: skip
                if attempt == self.tries or isinstance(exc, PermanentDeliveryError):
                    break
                self.stats.retries += 1
                self._changed(alert)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, self.backoff_max_s)
                continue
            delivery.status = "delivered"
            delivery.delivered_at = time.time()
            self.stats.delivered += 1
            self.stats.per_channel[route.channel] += 1
            self._changed(alert)
            return
        delivery.status = "failed"
        self.stats.failed += 1
        log.warning("alert %s to %s %s failed after %d tries: %s", alert.id, route.channel, route.target,
                    delivery.attempts, delivery.last_error)  # fmt: skip
        self._changed(alert)
