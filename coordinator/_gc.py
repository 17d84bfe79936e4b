"""The coordinator's garbage-collector setting, and the pauses the collector costs it.

CPython collects its youngest generation after 700 net allocations of container objects.
After 10 of those it collects the middle one, and after 10 of those it makes a full
collection, once the objects that survived have grown by a quarter since the last full
one. A full collection walks every task entry, spec and payload the coordinator holds, on
the thread that schedules. A run of 20,000 tasks is 20,000 of each.

Measured with ``python -m bench.fleet`` (round 5 in docs/performance.md): a 20,000-task run,
medians of 10 runs each on a 2-core machine.
- At Python's threshold, the collector paused the coordinator for 445 ms at 1,000 workers, with 4
  full collections. At 2 workers it paused for 132 ms, with 2.
- At 10,000, it paused for 150 ms and 51 ms, with no full collection in either run.
A fleet's connections add allocations, and objects for each collection to walk.

The cost is memory that reference cycles hold a little longer: at most the cycles among 10,000
young objects. Garbage that is not in a cycle is freed by reference counting at once, whatever
the threshold. Peak RSS did not move in those runs.

``--gc-threshold`` sets the youngest generation's threshold. Its default is
:data:`GC_YOUNG_THRESHOLD`; 700 gives back Python's own. The older generations keep Python's
thresholds. :class:`GcPauses` times every collection for the metrics
(``xpipe_gc_pause_seconds_total``, ``xpipe_gc_collections_total``).
"""

from __future__ import annotations

import gc
import time

__all__ = ["GC_YOUNG_THRESHOLD", "GcPauses", "process_pauses", "set_young_threshold"]

#: Net container allocations between collections of the youngest generation (Python: 700).
GC_YOUNG_THRESHOLD = 10_000

#: The generations ``gc`` has (0: youngest, 2: full collections).
GENERATIONS = (0, 1, 2)


def set_young_threshold(threshold: int) -> None:
    """Collect the youngest generation after ``threshold`` net allocations (the others unchanged).

    Raises:
        ValueError: ``threshold`` is below 1; 0 would turn the collector off, and reference
            cycles would then never be freed.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"--gc-threshold must be a whole number of at least 1 (Python's own is 700), not {threshold!r}")
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)


class GcPauses:
    """Collections and the seconds they paused this process, per generation.

    Installed as a ``gc.callbacks`` entry: two calls per collection, each a clock read and a
    few list operations. Read from the metrics thread; the lists are only ever replaced
    element by element, so a read sees whole numbers.
    """

    def __init__(self) -> None:
        self.collections = [0] * len(GENERATIONS)
        self.seconds = [0.0] * len(GENERATIONS)
        self._started = 0.0
        self._installed = False

    def install(self) -> GcPauses:
        if not self._installed:
            gc.callbacks.append(self._on_collect)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_collect)
            self._installed = False

    def _on_collect(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started


_PROCESS: GcPauses | None = None


def process_pauses() -> GcPauses:
    """This process's one :class:`GcPauses`, installed on the first call (coordinators share it)."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = GcPauses().install()
    return _PROCESS
