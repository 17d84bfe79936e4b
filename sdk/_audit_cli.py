"""``xpipe audit``: show the audit log, or check its hash chain (``--verify``).

``--verify`` reads every entry (all pages, no filter) and recomputes the chain here, on the
client, with ``xpipe.security._audit.verify``, against the head hash the coordinator
stores: an entry changed, removed (also at the end) or reordered is named by its seq, and
the command exits with status 1. Registered into ``xpipe`` by :func:`register`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable

__all__ = ["parse_since", "register"]

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``15m``, ``1h``, ``7d``) or an ISO 8601 time.

    An ISO time without a zone is UTC. Returns unix seconds.

    Raises:
        argparse.ArgumentTypeError: neither form; the message shows both.
    """
    match = _AGO.match(text.strip())
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS_S[match[2]]
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: expected a duration (90s, 15m, 1h, 7d) or an ISO 8601 time (2026-11-29T22:00:00Z)"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.timestamp()


def _row(e) -> str:
    when = datetime.fromtimestamp(e.at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    status = dict(e.detail).get("status", "")
    outcome = f"{e.outcome} ({status})" if status else e.outcome
    return f"{e.seq:>6}  {when}  {e.principal:<12}  {e.action}  {e.target}  {outcome}"


def cmd_audit(opts, client_factory: Callable[[Any], Any]) -> int:
    from ._lineage import iter_pages
    from .security._audit import verify

    if opts.verify and (opts.since is not None or opts.principal):
        raise SystemExit("xpipe audit: --verify checks the whole log; leave out --since and --principal")
    client = client_factory(opts)
    try:
        filters = {"since": opts.since or 0.0, "principal": opts.principal}
        pages = list(iter_pages(client.get_audit, **filters))
    finally:
        client.close()
    entries = [e for page in pages for e in page.entries]
    last = pages[-1]
    if opts.verify:
        problem = verify(entries, expected_head=last.head_hash if last.head_seq else None)
        if opts.json:
            print(json.dumps({
                "ok": problem is None, "entries": len(entries), "head_seq": last.head_seq, "head_hash": last.head_hash,
                "problem": None if problem is None else {"seq": problem.seq, "kind": problem.kind, "message": problem.message},
            }))  # fmt: skip
        elif problem is None:
            print(f"audit log intact: {len(entries)} entries, head seq {last.head_seq} ({last.head_hash[:16]}...)")
        else:
            print(f"audit log TAMPERED: {problem.message}")
        if last.dropped:
            print(f"note: the coordinator dropped {last.dropped} entries since it started (its queue was full)")
        return 0 if problem is None else 1
    if opts.json:
        print(json.dumps({"entries": [e.to_json() for e in entries], "head_seq": last.head_seq,
                          "head_hash": last.head_hash, "dropped": last.dropped, "queued": last.queued}))  # fmt: skip
    else:
        print(f"{'SEQ':>6}  {'TIME (UTC)':<24}  {'PRINCIPAL':<12}  ACTION  TARGET  OUTCOME")
        for e in entries:
            print(_row(e))
        if last.dropped:
            print(f"note: the coordinator dropped {last.dropped} entries since it started (its queue was full)")
    return 0


def register(sub, common: argparse.ArgumentParser, client_factory: Callable[[Any], Any]) -> None:
    """Add ``xpipe audit`` to the ``xpipe`` subcommands."""
    audit = sub.add_parser("audit", parents=[common], help="show the audit log, or check it with --verify")
    audit.add_argument("--since", type=parse_since, default=None, help="90s, 15m, 1h, 7d, or an ISO 8601 time")
    audit.add_argument("--principal", default="", help="only this principal's entries (default: every principal)")
    audit.add_argument("--verify", action="store_true",
                       help="recompute the hash chain over every entry; exit 1 naming the first entry changed, "
                            "removed or reordered")  # fmt: skip
    audit.set_defaults(fn=lambda opts: cmd_audit(opts, client_factory))
