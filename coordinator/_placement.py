"""Resource- and label-aware placement of tasks on workers: pure, no I/O, no clock.

Workers advertise what they offer (cpu cores, memory, GPUs, custom resources, labels);
tasks request some of it. :class:`PlacementIndex` keeps a ledger of what every worker
holds (the requests of the attempts sent to it and not yet finished) and answers one
question quickly: which worker should take this request? A worker is a candidate only
when the request fits its total resources, its labels match, it has credit (slots plus
prefetch) left, and what it holds stays within its resources scaled by credit/slots.
That scale is the prefetch: attempts queued on a worker before a slot frees up. The
worker starts a queued attempt only when its own free resources cover the request
(``worker/_daemon.py``), so the tasks *running* on a worker never exceed what it offers,
whatever its slot count; without prefetch (credit == slots) the ledger alone ensures it.

Among candidates a strategy chooses:

* ``resource_balanced`` (the default) evens utilisation: the lowest dominant share
  (the most used of slots, cpu, memory, gpu and custom resources, as a fraction of
  what the worker offers) plus the live cpu load its heartbeats report;
* ``pack`` fills workers first: the fullest worker that still fits, then the oldest;
* ``spread`` spreads tasks out: the fewest tasks per slot, then the most free cpu.

Cost per decision stays near O(log W): every strategy keeps a heap of workers with room,
with lazy invalidation (each worker has a version; an entry of an older version is
dropped when it surfaces). A worker with no credit or no free cpu has no entry at all,
so a saturated cluster answers "no" at once. Two max-heaps of free cpu and free memory
reject a request no worker can hold right now in O(log W). A request constrained to a
few workers (a GPU, a custom resource, a label, a handler that few offer) scans only
those, through inverted indexes. Requests that failed within one scheduling pass are
remembered until something is released, so a queue of identical big tasks costs O(1)
each. ``bench/placement.py`` measures the cost per decision at 1,000 workers.

Locality: a task whose inputs are big results (``artifact_ref`` payloads, 256 KiB or more)
goes to the worker that produced most of those bytes when that worker can take it now and is
not much busier than the strategy's choice (:meth:`PlacementIndex.prefer_holder`): there the
executor may still hold the bytes in memory and the file is in the local page cache. Only
runs that produced such a result pay for the check.

All quantities are integers: cpu and custom resources in thousandths, memory in bytes,
so the ledger never drifts.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from xpipe._domain import DEFAULT_PLACEMENT_STRATEGY as DEFAULT_STRATEGY
from xpipe._domain import PLACEMENT_STRATEGIES as STRATEGIES
from xpipe._proto import common_pb2 as pb
from xpipe.security._codetrust import CODE_KINDS

__all__ = [
    "Request", "PlacementIndex", "STRATEGIES", "DEFAULT_STRATEGY", "normalize_strategy", "UNBOUNDED", "big_input_holder",
]  # fmt: skip

#: Stands for "no limit" on a worker that advertises no Resources at all (a bare client).
UNBOUNDED = 1 << 62
#: At most this many workers in a constraint's inverted index: scan them instead of the heap.
_SMALL_SET = 64
_MILLI = 1000


def normalize_strategy(name: str) -> str:
    """The strategy a run uses: ``""`` means the default.

    Raises:
        ValueError: an unknown strategy, naming the known ones.
    """
    if not name:
        return DEFAULT_STRATEGY
    if name not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return name


def _milli(value: float) -> int:
    return int(round(value * _MILLI))


def _fmt_memory(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


@dataclass(frozen=True, slots=True)
class Request:
    """What one task asks for, in ledger units. A task that asks nothing asks 1 cpu core."""

    cpu_milli: int = _MILLI
    memory_bytes: int = 0
    gpu: int = 0
    custom: tuple[tuple[str, int], ...] = ()  # (name, thousandths), sorted
    labels: tuple[tuple[str, str], ...] = ()  # sorted
    pinned: bool = False  # a long-running task: it holds a slot of its own until it ends

    @classmethod
    def of(cls, resources: pb.Resources | None, labels: Mapping[str, str] | None = None, *, pinned: bool = False) -> Request:
        """From a TaskSpec's ``resources``, ``labels`` and ``long_running``; cpu 0 (unset) means 1 core."""
        if resources is None and not labels and not pinned and cls is Request:
            return _ONE_CORE  # most tasks: one shared (frozen) instance, built once
        res = resources if resources is not None else pb.Resources()
        return cls(
            cpu_milli=_milli(res.cpu_cores) or _MILLI,
            memory_bytes=res.memory_bytes,
            gpu=res.gpu,
            custom=tuple(sorted((k, _milli(v)) for k, v in res.custom.items() if v > 0)),
            labels=tuple(sorted((labels or {}).items())),
            pinned=pinned,
        )

    @classmethod
    def limits(cls, resources: pb.Resources) -> Request:
        """A run's ``resource_limits``: zero fields are "no limit" (UNBOUNDED)."""
        return cls(
            cpu_milli=_milli(resources.cpu_cores) or UNBOUNDED,
            memory_bytes=resources.memory_bytes or UNBOUNDED,
            gpu=resources.gpu or UNBOUNDED,
            custom=tuple(sorted((k, _milli(v)) for k, v in resources.custom.items() if v > 0)),
        )

    def describe(self) -> str:
        parts = [f"cpu_cores={self.cpu_milli / _MILLI:g}"]
        if self.memory_bytes:
            parts.append(f"memory={_fmt_memory(self.memory_bytes)}")
        if self.gpu:
            parts.append(f"gpu={self.gpu}")
        parts += [f"{k}={v / _MILLI:g}" for k, v in self.custom]
        parts += [f"label {k}={v}" for k, v in self.labels]
        return ", ".join(parts)

    def to_proto(self) -> pb.Resources:
        return pb.Resources(
            cpu_cores=self.cpu_milli / _MILLI, memory_bytes=self.memory_bytes, gpu=self.gpu,
            custom={k: v / _MILLI for k, v in self.custom},
        )  # fmt: skip


#: What a task that asks for nothing asks for (1 cpu core): shared by all such tasks.
_ONE_CORE = Request()
_ALL_KINDS = frozenset(CODE_KINDS)
#: The error type of a task whose (non-pickle) kind of code every worker refuses: something
#: the task needs, a worker that runs it, is missing.
_KIND_REFUSED = "DEPENDENCY_FAILURE"


class _Node:
    """One worker as the index sees it: capacity, ledger, credit, load."""

    __slots__ = (
        "worker_id", "seq", "slots", "credit", "cpu", "memory", "gpu", "custom", "labels", "handlers",
        "code_kinds", "eligible", "used_cpu", "used_memory", "used_gpu", "used_custom", "held", "load",
        "version", "headroom", "pinned",
    )  # fmt: skip

    def __init__(self, worker_id: str, seq: int):
        self.worker_id = worker_id
        self.seq = seq
        self.slots = 1
        self.credit = 1
        self.cpu = self.memory = UNBOUNDED
        self.gpu = 0
        self.custom: dict[str, int] = {}
        self.labels: dict[str, str] = {}
        self.handlers: frozenset[str] = frozenset()
        self.code_kinds: frozenset[str] = _ALL_KINDS  # what --allow-code lets it run
        self.eligible = False
        self.used_cpu = self.used_memory = self.used_gpu = 0
        self.used_custom: dict[str, int] = {}
        self.held: dict[object, Request] = {}
        self.load = 0.0
        self.version = 0
        # Held attempts include prefetched ones that wait on the worker; the worker starts
        # one only when its own resources are free (see worker/_daemon.py), so what may be
        # *held* is the capacity scaled by credit/slots, while what *runs* never exceeds it.
        self.headroom = 1.0
        # Held long-running attempts (stream instances): each keeps a slot for good, so the
        # worker takes other work (prefetch included) only while a slot is not pinned.
        self.pinned = 0

    def _cap(self, total: int) -> int:
        return total if total == UNBOUNDED else int(total * self.headroom)

    def _cap_cpu(self) -> int:
        """The cpu cap in whole cores (never below the worker's own cpu).

        A fractional cap (2 cores x 1.25 = 2.5) would leave "room" that no 1-core task (the
        default request) fits, and a scheduling pass would scan the whole ready queue for it.
        """
        if self.cpu == UNBOUNDED:
            return UNBOUNDED
        return max(self.cpu, self._cap(self.cpu) // _MILLI * _MILLI)

    def has_room(self) -> bool:
        return (
            self.eligible and len(self.held) < self.credit and self.pinned < self.slots
            and self.used_cpu < self._cap_cpu()
        )  # fmt: skip

    def fits_now(self, r: Request) -> bool:
        # A long-running attempt needs a slot free now: queued behind others it would wait
        # for them, and a slot it took as prefetch would never come back.
        if len(self.held) >= (self.slots if r.pinned else self.credit) or self.pinned >= self.slots:
            return False
        if not self.fits_ever(r):
            return False
        if self.used_cpu + r.cpu_milli > self._cap_cpu() or self.used_memory + r.memory_bytes > self._cap(self.memory):
            return False
        if self.used_gpu + r.gpu > self._cap(self.gpu):
            return False
        for name, amount in r.custom:
            if self.used_custom.get(name, 0) + amount > self._cap(self.custom.get(name, 0)):
                return False
        return True

    def fits_ever(self, r: Request) -> bool:
        """Could this worker hold the request when idle? (Labels and totals only.)"""
        if r.cpu_milli > self.cpu or r.memory_bytes > self.memory or r.gpu > self.gpu:
            return False
        if any(amount > self.custom.get(name, 0) for name, amount in r.custom):
            return False
        return self.matches(r)

    def matches(self, r: Request) -> bool:
        labels = self.labels
        return all(labels.get(k) == v for k, v in r.labels)

    def share(self) -> float:
        """Dominant share: the most used of slots and every resource, as a fraction."""
        s = len(self.held) / self.slots
        if self.cpu != UNBOUNDED:
            s = max(s, self.used_cpu / self.cpu)
        if self.memory != UNBOUNDED and self.memory:
            s = max(s, self.used_memory / self.memory)
        if self.gpu:
            s = max(s, self.used_gpu / self.gpu)
        for name, used in self.used_custom.items():
            total = self.custom.get(name, 0)
            if total:
                s = max(s, used / total)
        return s

    def keys(self) -> tuple[tuple, tuple, tuple, int, int]:
        """Heap keys for balanced, pack, spread; free cpu and memory (for the max-heaps)."""
        share = self.share()
        free_cpu = self._cap_cpu() - self.used_cpu
        free_mem = self._cap(self.memory) - self.used_memory
        return (
            (share + self.load, -free_cpu, self.seq),
            (-share, self.seq),
            (len(self.held) / self.slots, -free_cpu, self.seq),
            free_cpu,
            free_mem,
        )


class PlacementIndex:
    """Workers, their free resources, and the choice of a worker for a request.

    The state machine calls :meth:`upsert` when a worker registers or changes, :meth:`hold`
    / :meth:`release` as attempts are sent and finish, :meth:`set_load` on heartbeats, and
    :meth:`pick` to place a task. Every worker in the index counts as registered for
    :meth:`why_never_fits`; remove lost workers with :meth:`remove`.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self._seq = itertools.count()
        # One lazy heap per strategy, plus max-heaps of free cpu and free memory.
        self._heaps: dict[str, list[tuple]] = {s: [] for s in STRATEGIES}
        self._free_cpu: list[tuple[int, int, str]] = []
        self._free_mem: list[tuple[int, int, str]] = []
        # Nodes changed since the heaps were last read: their entries are pushed once, when
        # a heap is next read (:meth:`_refresh`), not on every hold and release.
        self._dirty: dict[str, _Node] = {}
        # Inverted indexes for narrow constraints.
        self._by_label: dict[tuple[str, str], set[str]] = {}
        self._by_resource: dict[str, set[str]] = {}  # "gpu" and custom names
        self._by_handler: dict[str, set[str]] = {}
        self._capacity_epoch = 0
        self._never_cache: dict[Request, str] = {}
        self._failed_now: set[tuple] = set()  # requests that found no room since the last release
        #: Entries looked at by pick(), for the benchmark and tests.
        self.examined = 0
        #: Tasks sent to the worker holding their big inputs instead of the strategy's choice.
        self.locality_hits = 0

    # ------------------------------------------------------------------ workers

    def upsert(
        self,
        worker_id: str,
        *,
        slots: int,
        credit: int,
        resources: pb.Resources | None,
        labels: Mapping[str, str],
        handlers: Iterable[str] = (),
        code_kinds: Iterable[str] = CODE_KINDS,
        eligible: bool = True,
    ) -> None:
        """Add a worker or update what it offers (keeps what it holds).

        ``code_kinds``: the kinds of code it runs (``--allow-code``), of ``CODE_KINDS``.
        """
        node = self.nodes.get(worker_id)
        if node is None:
            node = self.nodes[worker_id] = _Node(worker_id, next(self._seq))
        else:
            self._unindex(node)
        node.slots = max(1, slots)
        node.credit = max(0, credit)
        node.headroom = max(1.0, node.credit / node.slots)
        if resources is None:
            node.cpu, node.memory, node.gpu, node.custom = UNBOUNDED, UNBOUNDED, 0, {}
        else:
            node.cpu = _milli(resources.cpu_cores)
            node.memory = resources.memory_bytes
            node.gpu = resources.gpu
            node.custom = {k: _milli(v) for k, v in resources.custom.items() if v > 0}
        node.labels = dict(labels)
        node.handlers = frozenset(handlers)
        node.code_kinds = frozenset(code_kinds)
        node.eligible = eligible
        self._reindex(node)
        self._capacity_changed()
        self._touch(node)

    def set_eligible(self, worker_id: str, eligible: bool) -> None:
        """A worker that is disconnected or draining takes no new work but stays registered."""
        node = self.nodes.get(worker_id)
        if node is not None and node.eligible != eligible:
            node.eligible = eligible
            self._failed_now.clear()
            self._touch(node)

    def set_load(self, worker_id: str, cpu_percent: float) -> None:
        """The live cpu load from a heartbeat (0..100), weighed by ``resource_balanced``."""
        node = self.nodes.get(worker_id)
        if node is not None:
            load = min(max(cpu_percent, 0.0), 100.0) / 100.0
            if abs(load - node.load) >= 0.01:
                node.load = load
                self._touch(node)

    def remove(self, worker_id: str) -> None:
        """Forget a lost worker (its held attempts go with it)."""
        node = self.nodes.pop(worker_id, None)
        if node is not None:
            self._unindex(node)
            node.version += 1
            self._capacity_changed()

    # ------------------------------------------------------------------ ledger

    def hold(self, worker_id: str, key: object, request: Request) -> None:
        """Charge ``request`` to the worker for attempt ``key``."""
        node = self.nodes.get(worker_id)
        if node is None or key in node.held:
            return
        node.held[key] = request
        if request.pinned:
            node.pinned += 1
        node.used_cpu += request.cpu_milli
        node.used_memory += request.memory_bytes
        node.used_gpu += request.gpu
        for name, amount in request.custom:
            node.used_custom[name] = node.used_custom.get(name, 0) + amount
        self._touch(node)

    def release(self, worker_id: str, key: object) -> None:
        """Give back what attempt ``key`` held (no-op if it held nothing)."""
        node = self.nodes.get(worker_id)
        if node is None:
            return
        request = node.held.pop(key, None)
        if request is None:
            return
        if request.pinned:
            node.pinned -= 1
        node.used_cpu -= request.cpu_milli
        node.used_memory -= request.memory_bytes
        node.used_gpu -= request.gpu
        for name, amount in request.custom:
            left = node.used_custom.get(name, 0) - amount
            if left:
                node.used_custom[name] = left
            else:
                node.used_custom.pop(name, None)
        self._failed_now.clear()
        self._touch(node)

    def held(self, worker_id: str) -> int:
        node = self.nodes.get(worker_id)
        return len(node.held) if node is not None else 0

    # ------------------------------------------------------------------ decisions

    def pick(
        self, request: Request, *, strategy: str = DEFAULT_STRATEGY, handler: str = "", code: str = "import"
    ) -> str | None:
        """The worker that should take ``request`` now, or None if none has room for it.

        ``code`` is the task's kind of code (``xpipe.security._codetrust.code_kind``): only a
        worker that runs that kind is chosen.
        """
        sig = (request, handler, code)
        if sig in self._failed_now:
            return None
        chosen = self._pick(request, strategy, handler, code)
        if chosen is None:
            self._failed_now.add(sig)
        return chosen

    def prefer_holder(
        self, holder: str, chosen: str, request: Request, *, handler: str = "", code: str = "import"
    ) -> str:
        """``holder`` (it has a task's big inputs) instead of ``chosen`` if the load allows it.

        It must be able to take the request now (the same test as :meth:`pick`) and hold at
        most one slot's worth more attempts than ``chosen``: queueing behind a busy holder
        costs more than reading a file another worker wrote.
        """
        if holder == chosen:
            return chosen
        node, other = self.nodes.get(holder), self.nodes.get(chosen)
        if node is None or other is None or not node.has_room() or not self._ok(node, request, handler, code):
            return chosen
        if len(node.held) > len(other.held) + node.slots:
            return chosen
        self.locality_hits += 1
        return holder

    def _pick(self, request: Request, strategy: str, handler: str, code: str) -> str | None:
        self._refresh()
        # Quick reject: nobody has that much free cpu (or memory) right now.
        top = self._top(self._free_cpu)
        if top is None or -top[0] < request.cpu_milli:
            return None
        if request.memory_bytes:
            top = self._top(self._free_mem)
            if top is None or -top[0] < request.memory_bytes:
                return None
        narrow = self._narrowest(request, handler)
        if narrow is not None and len(narrow) <= _SMALL_SET:
            return self._scan(narrow, request, strategy, handler, code)
        heap = self._heaps[strategy]
        skipped: list[tuple] = []
        chosen = None
        nodes = self.nodes
        while heap:
            entry = heapq.heappop(heap)
            self.examined += 1
            node = nodes.get(entry[-1])
            if node is None or node.version != entry[-2]:
                continue  # stale
            skipped.append(entry)
            if self._ok(node, request, handler, code):
                chosen = node.worker_id
                break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return chosen

    def _scan(self, ids: Iterable[str], request: Request, strategy: str, handler: str, code: str) -> str | None:
        pos = STRATEGIES.index(strategy)
        best_key, best = None, None
        for worker_id in ids:
            node = self.nodes[worker_id]
            self.examined += 1
            if node.has_room() and self._ok(node, request, handler, code):
                key = node.keys()[pos]
                if best_key is None or key < best_key:
                    best_key, best = key, worker_id
        return best

    @staticmethod
    def _ok(node: _Node, request: Request, handler: str, code: str) -> bool:
        if handler and handler not in node.handlers:
            return False
        if code not in node.code_kinds:
            return False
        return node.fits_now(request)

    def _narrowest(self, request: Request, handler: str) -> set[str] | None:
        sets = []
        if request.gpu:
            sets.append(self._by_resource.get("gpu", set()))
        for name, _ in request.custom:
            sets.append(self._by_resource.get(name, set()))
        for item in request.labels:
            sets.append(self._by_label.get(item, set()))
        if handler:
            sets.append(self._by_handler.get(handler, set()))
        return min(sets, key=len) if sets else None

    def _top(self, heap: list[tuple[int, int, str]]) -> tuple | None:
        """Drop stale entries off a free-resource max-heap; return the valid top or None."""
        nodes = self.nodes
        while heap:
            _, version, worker_id = heap[0]
            node = nodes.get(worker_id)
            if node is not None and node.version == version:
                return heap[0]
            heapq.heappop(heap)
        return None

    def has_room(self) -> bool:
        """Is any eligible worker able to take some task now? O(1) amortised."""
        self._refresh()
        return self._top(self._free_cpu) is not None

    def why_never_fits(self, request: Request) -> str:
        """Why no registered worker could ever hold ``request`` ("" if one could).

        With no worker registered at all the answer is "" too: workers may still be starting,
        and "impossible" is judged only against workers that have registered.
        """
        if not self.nodes:
            return ""
        cached = self._never_cache.get(request)
        if cached is not None:
            return cached
        answer = self._why_never_fits(request)
        self._never_cache[request] = answer
        return answer

    def why_never_served(self, handler: str = "", code: str = "import") -> tuple[str, str]:
        """(error type, why) when no registered worker could ever run such a task, else ("", "").

        A handler no worker registered fails ``HANDLER_NOT_FOUND``; a kind of code every
        worker refuses (``--allow-code``, ``--no-pickled-code``) fails ``PICKLED_CODE_REFUSED``
        for pickled code, else ``_KIND_REFUSED``. Judged, like :meth:`why_never_fits`, only
        once some worker has registered.
        """
        if not self.nodes:
            return "", ""
        if handler and not self._by_handler.get(handler):
            return "HANDLER_NOT_FOUND", f"no registered worker has handler {handler!r}"
        if not any(code in n.code_kinds for n in self.nodes.values()):
            if code == "pickle":
                return (
                    "PICKLED_CODE_REFUSED",
                    "every registered worker refuses pickled code (started with --no-pickled-code or "
                    "--allow-code without pickle); make the function importable",
                )
            return _KIND_REFUSED, f"every registered worker refuses {code} code (started with --allow-code without {code})"
        if handler and not any(code in self.nodes[w].code_kinds for w in self._by_handler[handler]):
            return _KIND_REFUSED, f"every worker with handler {handler!r} refuses handler code (--allow-code)"
        return "", ""

    def _why_never_fits(self, request: Request) -> str:
        nodes = list(self.nodes.values())
        if any(n.fits_ever(request) for n in nodes):
            return ""
        labelled = [n for n in nodes if n.matches(request)]
        if not labelled:
            wanted = ", ".join(f"{k}={v}" for k, v in request.labels)
            return f"no registered worker has labels {wanted}"
        missing = []
        best_cpu = max(n.cpu for n in labelled)
        if request.cpu_milli > best_cpu:
            missing.append(f"cpu_cores={request.cpu_milli / _MILLI:g} (largest offer: {best_cpu / _MILLI:g})")
        best_mem = max(n.memory for n in labelled)
        if request.memory_bytes > best_mem:
            missing.append(f"memory={_fmt_memory(request.memory_bytes)} (largest offer: {_fmt_memory(best_mem)})")
        best_gpu = max(n.gpu for n in labelled)
        if request.gpu > best_gpu:
            missing.append(f"gpu={request.gpu} (largest offer: {best_gpu})")
        for name, amount in request.custom:
            best = max(n.custom.get(name, 0) for n in labelled)
            if amount > best:
                missing.append(f"{name}={amount / _MILLI:g} (largest offer: {best / _MILLI:g})")
        where = " with matching labels" if request.labels else ""
        if missing:
            return f"no registered worker{where} offers {'; '.join(missing)}"
        return f"no single registered worker{where} offers all of {request.describe()} together"

    # ------------------------------------------------------------------ internals

    def _capacity_changed(self) -> None:
        self._capacity_epoch += 1
        self._never_cache.clear()
        self._failed_now.clear()

    def _touch(self, node: _Node) -> None:
        """The node changed: bump its version (its heap entries go stale) and mark it dirty.

        Its fresh entries are pushed by :meth:`_refresh` when a heap is next read. With 1,000
        workers a turn's results release a few attempts on each of many workers, and pushing
        five entries per release into heaps of thousands (most of them read by nobody before
        the node changed again) cost a fifth of the coordinator's main thread.
        """
        node.version += 1
        self._dirty[node.worker_id] = node

    def _refresh(self) -> None:
        """Push one fresh entry per heap for every node changed since the last read."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        nodes = self.nodes
        balanced_heap, pack_heap, spread_heap = (self._heaps[s] for s in ("resource_balanced", "pack", "spread"))
        free_cpu_heap, free_mem_heap = self._free_cpu, self._free_mem
        push = heapq.heappush
        for wid, node in dirty.items():
            if nodes.get(wid) is not node or not node.has_room():
                continue
            balanced, pack, spread, free_cpu, free_mem = node.keys()
            v = node.version
            push(balanced_heap, (*balanced, v, wid))
            push(pack_heap, (*pack, v, wid))
            push(spread_heap, (*spread, v, wid))
            push(free_cpu_heap, (-free_cpu, v, wid))
            push(free_mem_heap, (-free_mem, v, wid))
        if len(self._free_cpu) > 4 * len(nodes) + 64:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heaps from live entries only (amortised O(1) per push)."""
        nodes = self.nodes

        def live(heap: list[tuple]) -> list[tuple]:
            kept = [e for e in heap if (n := nodes.get(e[-1])) is not None and n.version == e[-2]]
            heapq.heapify(kept)
            return kept

        for name in STRATEGIES:
            self._heaps[name] = live(self._heaps[name])
        self._free_cpu = live(self._free_cpu)
        self._free_mem = live(self._free_mem)

    def _reindex(self, node: _Node) -> None:
        wid = node.worker_id
        for item in node.labels.items():
            self._by_label.setdefault(item, set()).add(wid)
        if node.gpu:
            self._by_resource.setdefault("gpu", set()).add(wid)
        for name in node.custom:
            self._by_resource.setdefault(name, set()).add(wid)
        for name in node.handlers:
            self._by_handler.setdefault(name, set()).add(wid)

    def _unindex(self, node: _Node) -> None:
        wid = node.worker_id
        entries = [(self._by_label, item) for item in node.labels.items()]
        entries += [(self._by_resource, name) for name in ([*(["gpu"] if node.gpu else []), *node.custom])]
        entries += [(self._by_handler, name) for name in node.handlers]
        for index, key in entries:
            ids = index.get(key)
            if ids is not None:
                ids.discard(wid)
                if not ids:
                    del index[key]


def big_input_holder(inputs: Iterable[tuple[str, pb.Payload | None]]) -> str:
    """The worker that produced the most bytes of ``inputs`` held by reference; "" if none.

    Args:
        inputs: (worker that produced it, result) of each upstream task.
    """
    held: dict[str, int] = {}
    for worker_id, payload in inputs:
        if worker_id and payload is not None and payload.artifact_ref:
            held[worker_id] = held.get(worker_id, 0) + max(payload.size_bytes, 1)
    return max(held, key=held.__getitem__) if held else ""
