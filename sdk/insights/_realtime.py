"""``dashboard.start_real_time_view(pipeline)``: follow a pipeline's current run, then its next.

A background thread polls the coordinator (``ListRuns`` for the newest run of the pipeline,
``GetRun`` for its tasks) once per ``interval_s``, waiting on an event between polls, so it
costs nothing while idle and stops at once on :meth:`RealTimeView.stop`. On a TTY the same
thread redraws a ``rich`` live table; elsewhere the handle's :meth:`~RealTimeView.snapshot`
is the view.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from typing import Any

__all__ = ["RealTimeView", "start_real_time_view", "RUN_PAGE", "RUNS_LOOKED_AT"]

log = logging.getLogger(__name__)

#: The web dashboard's page of one run, after its base URL (the pages' hash route).
RUN_PAGE = "/#/runs/{run_id}"
#: Newest runs of the cluster looked through, per poll, for the pipeline's newest one.
RUNS_LOOKED_AT = 200


class RealTimeView:
    """A live view of one pipeline's runs: the newest, switching to the next as it starts.

    Attributes:
        pipeline: the pipeline's name.
        interval_s: seconds between polls.
    """

    def __init__(self, client: Any, dashboard_url: str, pipeline: str, *, interval_s: float = 1.0) -> None:
        if not isinstance(interval_s, int | float) or isinstance(interval_s, bool) or not 0.05 <= interval_s <= 3600:
            raise ValueError(f"interval_s must be a number of seconds from 0.05 to 3600, got {interval_s!r}")
        self.pipeline = pipeline
        self.interval_s = float(interval_s)
        self._client = client
        self._base_url = dashboard_url.rstrip("/")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = self._empty()
        self._polled = threading.Condition(self._lock)
        self._polls = 0
        self._live: Any = None
        self._thread = threading.Thread(target=self._run, name=f"xpipe-realtime-{pipeline}", daemon=True)

    # -- the handle

    @property
    def url(self) -> str:
        """The dashboard's page of the run shown now, or the dashboard itself ("" without one)."""
        run_id = self.snapshot()["run_id"]
        if not self._base_url:
            return ""
        return self._base_url + RUN_PAGE.format(run_id=run_id) if run_id else self._base_url + "/"

    def snapshot(self) -> dict[str, Any]:
        """The run shown now: ``run_id`` ("" before the first run), ``state``, ``counts`` per task
        state, ``tasks`` (name, state, attempts, worker, ``duration_s`` so far), ``elapsed_s``,
        ``updated_at`` (Unix seconds of the poll) and ``error`` (the last poll's failure, or "")."""
        with self._lock:
            return dict(self._snapshot)

    def wait_for_poll(self, timeout_s: float = 10.0) -> bool:
        """Block until the next poll has ended (True), or ``timeout_s`` passed (False)."""
        with self._polled:
            seen = self._polls
            return self._polled.wait_for(lambda: self._polls > seen or self._stop.is_set(), timeout_s)

    def stop(self) -> None:
        """Stop following (idempotent); the thread ends within one poll."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=max(5.0, self.interval_s + 5.0))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> RealTimeView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"RealTimeView(pipeline={self.pipeline!r}, run_id={s['run_id']!r}, state={s['state']!r})"

    # -- the thread

    def _empty(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "run_id": "", "state": "", "counts": {}, "tasks": [], "elapsed_s": 0.0,
                "created_at": 0.0, "updated_at": 0.0, "error": ""}  # fmt: skip

    def start(self, *, live: bool = False) -> RealTimeView:
        if live:
            self._live = _LiveTable()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._poll_once()
                self._stop.wait(self.interval_s)
        finally:
            if self._live is not None:
                self._live.close()

    def _poll_once(self) -> None:
        try:
            snap = self._read()
        except Exception as exc:  # the coordinator away for a moment: keep the last view, say why
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if error != self._snapshot["error"]:  # once per new error, not once per poll
                    log.warning("real-time view of %s cannot poll the coordinator: %s", self.pipeline, error)
                snap = {**self._snapshot, "error": error, "updated_at": time.time()}
        with self._polled:
            self._snapshot = snap
            self._polls += 1
            self._polled.notify_all()
        if self._live is not None:
            self._live.update(snap)

    def _read(self) -> dict[str, Any]:
        """The newest run of the pipeline (the next one as soon as it is submitted), and its tasks."""
        runs = [r for r in self._client.list_runs(RUNS_LOOKED_AT) if r.pipeline == self.pipeline]
        now = time.time()
        if not runs:
            return {**self._empty(), "updated_at": now}
        newest = max(runs, key=lambda r: r.created_at or 0.0)
        info = self._client.get_run(newest.run_id)
        tasks = []
        for t in info.tasks:
            end = t.finished_at or (now if t.state == "RUNNING" else None)
            duration_s = max(0.0, end - t.started_at) if t.started_at and end else 0.0
            tasks.append({"name": t.name, "state": t.state, "attempts": t.attempts, "worker": t.worker,
                          "duration_s": duration_s})  # fmt: skip
        s = info.summary
        created = s.created_at or now
        return {
            "pipeline": self.pipeline, "run_id": s.run_id, "state": s.state,
            "counts": dict(Counter(t["state"] for t in tasks)), "tasks": tasks,
            "elapsed_s": max(0.0, (s.finished_at or now) - created), "created_at": created, "updated_at": now,
            "error": "",
        }  # fmt: skip


class _LiveTable:
    """The TTY form: a ``rich`` Live table redrawn after each poll."""

    def __init__(self, console: Any = None) -> None:
        from rich.live import Live

        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._live.start()

    def update(self, snap: dict[str, Any]) -> None:
        from rich.table import Table

        counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(snap["counts"].items()))
        title = f"{snap['pipeline']}  run {snap['run_id'] or '(none yet)'}  {snap['state']}  {snap['elapsed_s']:.1f}s"
        table = Table(title=title, caption=counts or snap["error"] or None)
        for column in ("task", "state", "attempts", "worker", "seconds"):
            table.add_column(column, justify="right" if column in ("attempts", "seconds") else "left")
        for t in snap["tasks"]:
            table.add_row(t["name"], t["state"], str(t["attempts"]), t["worker"], f"{t['duration_s']:.1f}")
        self._live.update(table, refresh=True)

    def close(self) -> None:
        self._live.stop()


def start_real_time_view(dashboard: Any, pipeline: Any, *, interval_s: float = 1.0) -> RealTimeView:
    """Follow ``pipeline`` (a Pipeline or its name): a rich live table on a TTY, and always a handle.

    The view stops on ``.stop()`` and when the manager closes.

    Raises:
        ValueError: ``pipeline`` names nothing, or ``interval_s`` is out of range.
    """
    name = pipeline if isinstance(pipeline, str) else getattr(pipeline, "name", None)
    if not name or not isinstance(name, str):
        raise ValueError(f"pipeline must be a Pipeline or a pipeline name, got {pipeline!r}")
    manager = dashboard._manager
    view = RealTimeView(manager.client, dashboard.url, name, interval_s=interval_s)
    manager.on_close(view.stop)
    return view.start(live=sys.stdout.isatty())
