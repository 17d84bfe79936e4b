"""``xpipe streams``: status of stream pipelines, and ``stop`` / ``restart``.

``xpipe streams [--json] [NAME...]`` prints one row per stage (``--json``: the full status);
``xpipe streams stop NAME [--drain] [--timeout S]`` and ``xpipe streams restart [NAME...]``
(no names: every unhealthy one). Registered into ``xpipe`` by :func:`register`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Callable

__all__ = ["register"]

_ACTIONS = ("stop", "restart")
_COLUMNS = ("STREAM", "STATE", "STAGE", "INSTANCES", "IN/S", "OUT/S", "LAG", "BUFFER", "DROPPED", "ERRORS", "DLQ", "LATE")


def _rows(statuses) -> list[tuple[str, ...]]:
    rows = []
    for s in statuses:
        state = s.state if s.healthy else f"{s.state} (unhealthy)"
        for stage in s.stages or ():
            rows.append((s.name, state, stage.name, f"{stage.active}/{stage.parallelism}", f"{stage.records_in_per_s:.1f}",
                         f"{stage.records_out_per_s:.1f}", "?" if stage.lag < 0 else str(stage.lag),
                         f"{stage.buffer_fill:.0%}", str(stage.dropped), str(stage.errors), str(stage.dead_lettered),
                         str(stage.late)))  # fmt: skip
    return rows


def _print_table(statuses) -> None:
    rows = [_COLUMNS, *_rows(statuses)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for s in statuses:
        if s.problem:
            print(f"{s.name}: {s.problem}")


def cmd_streams(opts, client_factory: Callable[[Any], Any]) -> int:
    from ._handle import get_streams, restart_streams, stop_stream

    words = list(opts.names)
    action = words.pop(0) if words and words[0] in _ACTIONS else ""
    if action == "stop" and len(words) != 1:
        raise SystemExit("xpipe streams stop: name exactly one stream pipeline (xpipe streams stop NAME)")
    client = client_factory(opts)
    try:
        if action == "stop":
            status = stop_stream(client, words[0], drain=opts.drain, timeout_s=opts.timeout)
            print(json.dumps(dataclasses.asdict(status)) if opts.json else
                  f"stopping {status.name} (run {status.run_id}, {'draining' if opts.drain else 'stopping now'}; "
                  f"cancelled after {opts.timeout:g} s)")  # fmt: skip
            return 0
        if action == "restart":
            run_ids = restart_streams(client, words)
            if opts.json:
                print(json.dumps(run_ids))
            for name, run_id in sorted(run_ids.items()) if not opts.json else ():
                print(f"restarted {name}: run {run_id}")
            if not run_ids and not opts.json:
                print("nothing to restart: every stream pipeline is healthy")
            return 0
        statuses = list(get_streams(client, words).values())
    finally:
        client.close()
    if opts.json:
        print(json.dumps([dataclasses.asdict(s) for s in statuses], indent=1))
    else:
        _print_table(statuses)
    return 0


def register(sub, common: argparse.ArgumentParser, client_factory: Callable[[Any], Any]) -> None:
    """Add ``xpipe streams`` to the ``xpipe`` subcommands."""
    streams = sub.add_parser(
        "streams", parents=[common], help="stream pipelines' status; `streams stop NAME`, `streams restart [NAME...]`",
        description="Show stream pipelines (all, or NAME...); `xpipe streams stop NAME [--drain] [--timeout S]` stops "
                    "one, `xpipe streams restart [NAME...]` restarts them as new runs (no names: every unhealthy one).",
    )  # fmt: skip
    streams.add_argument("names", nargs="*", metavar="NAME", help="stream pipelines; or stop NAME / restart [NAME...]")
    streams.add_argument("--drain", action="store_true", help="stop: finish buffered records and open windows first")
    streams.add_argument("--timeout", type=float, default=30.0, metavar="S",
                         help="stop: cancel the run if it has not stopped after S seconds (default 30)")  # fmt: skip
    streams.set_defaults(fn=lambda opts: cmd_streams(opts, client_factory))
