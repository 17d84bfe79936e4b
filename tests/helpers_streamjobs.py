"""Stream tasks the stream runtime's integration tests run on real workers (importable there)."""

from __future__ import annotations

import time

from xpipe import StreamTask


class Enrich(StreamTask):
    """Adds ``enriched=True`` and the stage's tag."""

    def __init__(self, tag: str = "e"):
        self.tag = tag

    def process_batch(self, batch):
        return [dict(r, enriched=True, tag=self.tag) for r in batch]


class Double(StreamTask):
    """Doubles ``value``."""

    def process_batch(self, batch):
        return [dict(r, value=r.get("value", 0) * 2) for r in batch]


class Slow(StreamTask):
    """Sleeps ``delay_s`` per batch: a stage slower than its input."""

    def __init__(self, delay_s: float = 0.05):
        self.delay_s = delay_s

    def process_batch(self, batch):
        time.sleep(self.delay_s)
        return batch


class Poisoned(StreamTask):
    """Raises on a batch holding a record with ``poison``; passes the rest."""

    def process_batch(self, batch):
        if any(r.get("poison") for r in batch):
            raise ValueError("poisoned record")
        return batch


class WindowCount(StreamTask):
    """One record per window: its bounds, how many records and their ids."""

    def process_batch(self, batch):
        start, end = self.window
        return [{"start": start, "end": end, "count": len(batch), "ids": sorted(r["id"] for r in batch)}]


class Counting(StreamTask):
    """Keeps a running count in ``self.state`` and stamps it on each record."""

    def process_batch(self, batch):
        out = []
        for r in batch:
            self.state["n"] = self.state.get("n", 0) + 1
            out.append(dict(r, n=self.state["n"]))
        return out
