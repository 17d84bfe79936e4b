"""``xpipe alerts``: the alerts the coordinator raised, newest first, with each delivery's outcome.

Reads ``InsightsService.ListAlerts`` (permission ``alert:read``). Registered into ``xpipe``
by :func:`register`.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any, Callable

from ._audit_cli import parse_since

__all__ = ["register"]


def _delivery_text(d) -> str:
    text = f"{d.channel}:{d.status}"
    if d.attempts > 1:
        text += f"x{d.attempts}"
    return text


def cmd_alerts(opts, client_factory: Callable[[Any], Any]) -> int:
    from google.protobuf.json_format import MessageToDict

    from ._proto import insights_pb2, insights_pb2_grpc

    client = client_factory(opts)
    request = insights_pb2.ListAlertsRequest(since=opts.since or 0.0, limit=opts.limit, rule=opts.rule)
    try:
        reply = client._call_on(
            insights_pb2_grpc.InsightsServiceStub, lambda s: s.ListAlerts(request, timeout=client.call_timeout_s)
        )
    finally:
        client.close()
    if opts.json:
        alerts = [MessageToDict(a, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                  for a in reply.alerts]  # fmt: skip
        print(json.dumps({"alerts": alerts}, indent=2, sort_keys=True))
        return 0
    print(f"{'TIME (UTC)':<20}  {'RULE':<16}  {'SEVERITY':<8}  SUMMARY  [DELIVERIES]")
    for a in reply.alerts:
        when = datetime.fromtimestamp(a.at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        deliveries = " ".join(_delivery_text(d) for d in a.deliveries) or "-"
        print(f"{when:<20}  {a.rule:<16}  {a.severity:<8}  {a.summary}  [{deliveries}]")
    return 0


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"--limit must be an integer 1..10000, got {text!r}")
    return value


def register(sub, common: argparse.ArgumentParser, client_factory: Callable[[Any], Any]) -> None:
    """Add ``xpipe alerts`` to the ``xpipe`` subcommands."""
    from .telemetry._alertconfig import RULES

    alerts = sub.add_parser("alerts", parents=[common], help="alerts the coordinator raised and their deliveries")
    alerts.add_argument("--since", type=parse_since, default=None, help="90s, 15m, 1h, 7d, or an ISO 8601 time")
    alerts.add_argument("--rule", default="", choices=["", *RULES], metavar="RULE",
                        help=f"only one rule: {', '.join(RULES)} (default: every rule)")
    alerts.add_argument("--limit", type=_limit, default=100, help="most alerts shown (default 100)")
    alerts.set_defaults(fn=lambda opts: cmd_alerts(opts, client_factory))
