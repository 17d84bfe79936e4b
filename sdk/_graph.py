"""Checking that tasks form a DAG, on plain names: one implementation for all.

A leaf module: it imports only other leaves (:mod:`xpipe._limits`, :mod:`xpipe.errors`),
so the SDK (``Pipeline.validate``) and the coordinator (every submitted spec, from any
language) run the very same checks without loading each other.
"""

from __future__ import annotations

import gc
import heapq
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._limits import MAX_NAME_CHARS, NAME_RE
from .errors import PipelineValidationError

__all__ = ["validate_graph", "check_task_name", "sub_task_name", "sub_task_of"]

# Whatever NAME_RE refuses besides '/': whitespace and control characters.
_BAD_NAME_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f]")
# A cycle message names at most this many tasks (the exception's ``cycle`` has them all).
_CYCLE_SHOWN = 20


def check_task_name(name: Any) -> str:
    """``name`` if it is a valid task name; else PipelineValidationError naming the rules."""
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or NAME_RE.fullmatch(name) is None:
        raise PipelineValidationError(
            f"invalid task name {name!r:.80}: a task name is a non-empty string of at most {MAX_NAME_CHARS} "
            "chars, without whitespace, '/' or control characters"
        )
    return name


def validate_graph(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Check that tasks form a DAG and return them in a topological order.

    Kahn's algorithm with a heap: among tasks ready at the same time the one earlier in
    ``names`` goes first, so names already in a valid order come back unchanged (and that
    common case is detected in one pass, without building the graph). O((V + E) log V);
    100k tasks take well under half a second.

    Args:
        names: every task name, in submission order.
        deps: for each task name, the names it depends on (missing key: none).

    Raises:
        PipelineValidationError: no tasks, an invalid or duplicate name, an unknown
            dependency (``.unknown``), a self-dependency or a cycle (``.cycle``, first name
            repeated at the end; "a -> b" means b depends on a).
    """
    # The graph is built of ~2 lists per task; at 100k tasks the cyclic GC would rescan
    # them many times while they are being made (about a third of the run time), and none
    # of them can form a reference cycle, so collection is paused for the call.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _validate_graph(names, deps)
    finally:
        if gc_was_enabled:
            gc.enable()


def _validate_graph(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    count = len(names)
    if count == 0:
        raise PipelineValidationError("pipeline has no tasks; add at least one")
    try:
        index = {name: i for i, name in enumerate(names)}
    except TypeError:  # an unhashable name: report it as invalid
        for name in names:
            check_task_name(name)
        raise
    if len(index) != count:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise PipelineValidationError(f"duplicate task name {name!r:.100}")
            seen.add(name)
    _check_names(names, index)

    # Dependencies as indices; a KeyError means an unknown name, reported in full below.
    deps_of = deps.get
    no_deps: tuple[str, ...] = ()
    try:
        dep_index = [[index[dep] for dep in deps_of(name) or no_deps] for name in names]
    except (KeyError, TypeError):
        _raise_unknown(names, deps, index)
        raise  # unreachable: _raise_unknown always raises

    if all(not task_deps or max(task_deps) < i for i, task_deps in enumerate(dep_index)):
        return list(names)  # already in order: exactly what the heap would produce

    children: list[list[int]] = [[] for _ in range(count)]
    indegree = [len(task_deps) for task_deps in dep_index]
    for i, task_deps in enumerate(dep_index):
        for j in task_deps:
            children[j].append(i)
    ready = [i for i in range(count) if not indegree[i]]  # ascending, so already a heap
    order: list[int] = []
    append, heappop, heappush = order.append, heapq.heappop, heapq.heappush
    while ready:
        i = heappop(ready)
        append(i)
        for child in children[i]:
            indegree[child] -= 1
            if not indegree[child]:
                heappush(ready, child)
    if len(order) < count:
        # A task waiting on itself is never ordered; name it plainly rather than as a cycle.
        for i in range(count):
            if indegree[i] and i in dep_index[i]:
                raise PipelineValidationError(
                    f"task {names[i]!r} depends on itself", cycle=[names[i], names[i]]
                )
        cycle = _find_cycle(names, dep_index, indegree)
        shown = cycle if len(cycle) <= _CYCLE_SHOWN else [*cycle[: _CYCLE_SHOWN - 1], f"... ({len(cycle)} tasks)", cycle[-1]]
        raise PipelineValidationError(
            f"dependency cycle: {' -> '.join(shown)} (each task depends on the one before it)", cycle=cycle
        )
    return [names[i] for i in order]


def _check_names(names: Sequence[str], index: Mapping[str, int]) -> None:
    # One regex over all names joined by '/' instead of one match per name: any name with
    # whitespace, a control character or '/', a long or empty name, or a non-string fails
    # it, and only then is each name checked to report the bad one.
    try:
        joined = "/".join(names)
    except TypeError:
        joined = None
    if (
        joined is not None
        and "" not in index
        and joined.count("/") == len(names) - 1
        and _BAD_NAME_CHAR_RE.search(joined) is None
        and max(map(len, names), default=0) <= MAX_NAME_CHARS
    ):
        return
    for name in names:
        check_task_name(name)


def _raise_unknown(names: Sequence[str], deps: Mapping[str, Sequence[str]], index: Mapping[str, int]) -> None:
    unknown: list[tuple[str, Any]] = []
    for name in names:
        for dep in deps.get(name) or ():
            if not isinstance(dep, str) or dep not in index:
                unknown.append((name, dep))
    name, dep = unknown[0]
    more = f" (and {len(unknown) - 1} more unknown dependencies)" if len(unknown) > 1 else ""
    missing = list(dict.fromkeys(str(d) for _, d in unknown))
    raise PipelineValidationError(f"task {name!r} depends on unknown task {dep!r}{more}", unknown=missing)


def _find_cycle(names: Sequence[str], dep_index: list[list[int]], indegree: list[int]) -> list[str]:
    """One cycle among the tasks Kahn's algorithm could not order, in run order.

    Every such task still waits on some other such task, so walking from one to a waiting
    dependency must revisit a task; the stretch between the two visits is a cycle.
    """
    start = next(i for i in range(len(names)) if indegree[i])
    position: dict[int, int] = {}
    walk: list[int] = []
    node = start
    while node not in position:
        position[node] = len(walk)
        walk.append(node)
        node = next(j for j in dep_index[node] if indegree[j])
    loop = walk[position[node] :]  # each depends on the next; reverse for run order
    loop.reverse()
    first = loop.index(min(loop))  # start at the task given first, for a stable message
    loop = loop[first:] + loop[:first]
    return [names[i] for i in loop] + [names[loop[0]]]


def sub_task_name(parent: str, index: int) -> str:
    """The name of a fanned-out task's sub-task ``index`` (``"square[3]"``)."""
    return f"{parent}[{index}]"


def sub_task_of(name: str) -> tuple[str, int] | None:
    """(parent, index) when ``name`` reads as a sub-task's name ``parent[i]``, else None.

    Only a fanned-out task has sub-tasks, and the coordinator refuses other tasks named
    like them, so in a run such a name is a sub-task's when ``parent`` fans out.
    """
    if not name or name[-1] != "]":
        return None
    parent, _, index = name[:-1].rpartition("[")
    if not parent or not index.isdigit():
        return None
    return parent, int(index)
