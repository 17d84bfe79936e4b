"""Dynamic fan-out: a task run once per partition of its upstream result.

A task with ``parallelism=N``, a ``partitioning_strategy`` or ``expand=True`` is *mapped*
(Airflow's ``expand``, Prefect's ``.map``). Its first upstream in ``depends_on`` order is
split into partitions, and the task runs as one sub-task ``name[i]`` per partition, at most
``N`` released at once; its result is the list (or dict, same keys, same order) of the
sub-tasks' results. Other upstreams and ``args``/``kwargs`` reach every sub-task whole.

The coordinator never unpickles user data, so the split runs on a worker: the mapped
task's first attempt calls :func:`split_upstream` (this module, importable on every
worker) over the upstream value, and returns the partitions as one ``CODEC_MAP_PARTS``
payload (:class:`Partitions`), each part encoded on its own. The coordinator reads that
message (ours, not user data) and makes one sub-task per part.

Partitioning strategies (``partitioning_strategy=``):

* ``None``: the upstream value must be a list, tuple or dict; each item (or each value of
  the dict, keyed) is a partition.
* ``"by_date"`` / ``("by_date", {"field": "day", "period": "month"})``: rows (dicts or
  objects) grouped by a date field (a ``date``, ``datetime`` or ISO string; default field
  ``"date"``) per ``day`` (default), ``week``, ``month`` or ``year``; a dict keyed
  ``"2024-05-01"`` (``"2024-W18"``, ``"2024-05"``, ``"2024"``), in date order.
* ``("by_key", {"field": "region"})``: rows grouped by a field's value, a dict in
  first-seen order.
* ``"round_robin"`` / ``("round_robin", {"partitions": 4})``: rows dealt into N lists
  (default: the task's ``parallelism``).
* ``("by_size", {"size": 1000})``: consecutive chunks of at most ``size`` rows.
* a callable ``f(value) -> list | tuple | dict``: your own splitter.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import _codec
from ._limits import MAX_PARALLELISM, MAX_PARTITIONS
from ._proto import common_pb2

__all__ = ["STRATEGIES", "Partitions", "split_upstream", "split_value", "map_spec", "is_mapped"]

#: Where workers find the split (TaskSpec.map.splitter).
SPLIT_IMPORT_PATH = "xpipe._mapping:split_upstream"
_PERIODS = ("day", "week", "month", "year")


def _rows(value: Any, strategy: str) -> list[Any]:
    if isinstance(value, Mapping) or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"partitioning strategy {strategy!r} splits a list of rows, got {type(value).__name__}"
        )
    return list(value)


def _field(row: Any, field: str, index: int, strategy: str) -> Any:
    try:
        return row[field] if isinstance(row, Mapping) else getattr(row, field)
    except (KeyError, AttributeError):
        raise ValueError(
            f"partitioning strategy {strategy!r}: row {index} ({type(row).__name__}) has no field {field!r}"
        ) from None


def _date_key(raw: Any, period: str, index: int, field: str) -> str:
    day = raw
    if isinstance(raw, str):
        try:
            day = _dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(
                f"partitioning strategy 'by_date': row {index} field {field!r} is not an ISO date: {raw!r:.40}"
            ) from None
    if isinstance(day, _dt.datetime):
        day = day.date()
    if not isinstance(day, _dt.date):
        raise ValueError(
            f"partitioning strategy 'by_date': row {index} field {field!r} is {type(raw).__name__}, "
            "not a date, datetime or ISO date string"
        )
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return f"{day.year:04d}-{day.month:02d}"
    return f"{day.year:04d}"


def by_date(value: Any, *, field: str = "date", period: str = "day") -> dict[str, list[Any]]:
    """Rows grouped by their date field per ``period``, in date order."""
    groups: dict[str, list[Any]] = {}
    for i, row in enumerate(_rows(value, "by_date")):
        groups.setdefault(_date_key(_field(row, field, i, "by_date"), period, i, field), []).append(row)
    return dict(sorted(groups.items()))


def by_key(value: Any, *, field: str) -> dict[Any, list[Any]]:
    """Rows grouped by a field's value, in first-seen order."""
    groups: dict[Any, list[Any]] = {}
    for i, row in enumerate(_rows(value, "by_key")):
        groups.setdefault(_field(row, field, i, "by_key"), []).append(row)
    return groups


def round_robin(value: Any, *, partitions: int) -> list[list[Any]]:
    """Rows dealt into ``partitions`` lists: row i goes to list i % partitions."""
    rows = _rows(value, "round_robin")
    return [rows[i::partitions] for i in range(partitions)]


def by_size(value: Any, *, size: int) -> list[list[Any]]:
    """Consecutive chunks of at most ``size`` rows."""
    rows = _rows(value, "by_size")
    return [rows[i : i + size] for i in range(0, len(rows), size)]


#: The built-in splitters by name, with the parameters each takes (required ones first).
STRATEGIES: dict[str, tuple[Callable[..., Any], tuple[str, ...], tuple[str, ...]]] = {
    "by_date": (by_date, (), ("field", "period")),
    "by_key": (by_key, ("field",), ()),
    "round_robin": (round_robin, ("partitions",), ()),
    "by_size": (by_size, ("size",), ()),
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_strategy(
    strategy: Any, parallelism: int | None
) -> tuple[str, dict[str, Any], Callable[..., Any] | None]:
    """``partitioning_strategy`` read as (name, parameters, callable).

    Raises:
        ValueError: naming the problem (an unknown name, a missing or bad parameter).
    """
    if strategy is None:
        return "", {}, None
    if callable(strategy) and not isinstance(strategy, (str, tuple)):
        return getattr(strategy, "__name__", "callable"), {}, strategy
    params: Any = {}
    if isinstance(strategy, tuple):
        if len(strategy) != 2 or not isinstance(strategy[1], Mapping):
            raise ValueError(f"must be a name, (name, {{parameters}}) or a callable, got {strategy!r:.80}")
        strategy, params = strategy
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r:.80}; known: {', '.join(STRATEGIES)}, or a callable")
    _, required, optional = STRATEGIES[strategy]
    params = dict(params)
    if strategy == "round_robin" and "partitions" not in params and parallelism:
        params["partitions"] = parallelism
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{strategy!r} takes {', '.join(required + optional)}; unknown parameter(s) {unknown}")
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"{strategy!r} needs parameter(s) {missing}, e.g. ({strategy!r}, {{{missing[0]!r}: ...}})")
    for name in ("partitions", "size"):
        if name in params and not (_positive_int(params[name]) and params[name] <= MAX_PARTITIONS):
            raise ValueError(
                f"{strategy!r} parameter {name!r} must be an int from 1 to {MAX_PARTITIONS}, got {params[name]!r}"
            )
    if "field" in params and not isinstance(params["field"], str):
        raise ValueError(f"{strategy!r} parameter 'field' must be a string, got {params['field']!r}")
    if "period" in params and params["period"] not in _PERIODS:
        periods = ", ".join(_PERIODS)
        raise ValueError(f"'by_date' parameter 'period' must be one of {periods}, got {params['period']!r}")
    return strategy, params, None


def is_mapped(task: Any) -> bool:
    """Does this Task fan out (any of ``parallelism``, ``partitioning_strategy``, ``expand`` set)?"""
    return bool(
        getattr(task, "expand", False)
        or getattr(task, "parallelism", None) is not None
        or getattr(task, "partitioning_strategy", None) is not None
    )


def map_spec(task: Any) -> common_pb2.MapSpec | None:
    """The MapSpec of a Task, read at ``to_proto`` time (a subclass sets the attributes after
    ``super().__init__``); None when it does not fan out.

    Raises:
        ValueError: ``(field, problem)`` of the first bad setting.
    """
    if not is_mapped(task):
        return None
    expand = getattr(task, "expand", False)
    if not isinstance(expand, bool):
        raise ValueError("expand", f"must be True or False, got {expand!r:.80}")
    parallelism = getattr(task, "parallelism", None)
    if parallelism is not None and not (_positive_int(parallelism) and parallelism <= MAX_PARALLELISM):
        raise ValueError("parallelism", f"must be an int from 1 to {MAX_PARALLELISM}, got {parallelism!r:.80}")
    try:
        name, params, func = check_strategy(getattr(task, "partitioning_strategy", None), parallelism)
    except ValueError as exc:
        raise ValueError("partitioning_strategy", str(exc)) from None
    if task.kind == "command":
        raise ValueError("parallelism", "fan-out runs python and handler tasks, not commands")
    if not task.depends_on:
        raise ValueError("depends_on", "is empty; a fanned-out task maps over its first upstream task's result")
    kwargs = {"task": task.name, "strategy": name if func is None else "", "params": params, "splitter": func}
    spec = common_pb2.MapSpec(parallelism=parallelism or 0, strategy=name)
    spec.splitter.import_path = SPLIT_IMPORT_PATH
    what = f"partitioning_strategy of task {task.name!r}"
    spec.split_args.CopyFrom(_codec.encode(((), kwargs), "pickle", what=what))
    return spec


class Partitions:
    """What :func:`split_upstream` returns: the worker encodes it as one CODEC_MAP_PARTS
    payload, each part on its own (so a big part can travel by artifact reference)."""

    __slots__ = ("values", "keys")

    def __init__(self, values: list[Any], keys: list[Any] | None):
        self.values, self.keys = values, keys

    def to_payload(self, what: str) -> common_pb2.Payload:
        parts = common_pb2.MapParts(
            parts=[_codec.encode(v, "pickle", what=f"partition {i} of {what}") for i, v in enumerate(self.values)]
        )
        if self.keys is not None:
            parts.keys.CopyFrom(_codec.encode(self.keys, "pickle", what=f"partition keys of {what}"))
        data = parts.SerializeToString()
        return common_pb2.Payload(codec=common_pb2.CODEC_MAP_PARTS, data=data, size_bytes=len(data))


def split_value(value: Any, *, task: str, strategy: str = "", params: Mapping[str, Any] | None = None,
                splitter: Callable[..., Any] | None = None) -> Partitions:  # fmt: skip
    """Split ``value`` into partitions: by the splitter, else a list/tuple/dict as it is.

    Raises:
        TypeError: the value (or what the splitter returned) is not a list, tuple or dict.
        ValueError: more than MAX_PARTITIONS partitions, or a row the strategy cannot read.
    """
    how = "the upstream result"
    if splitter is not None:
        how = f"what partitioning_strategy {getattr(splitter, '__name__', 'callable')!r} returned"
        value = splitter(value)
    elif strategy:
        how = f"what partitioning strategy {strategy!r} returned"
        value = STRATEGIES[strategy][0](value, **dict(params or {}))
    if isinstance(value, Mapping):
        keys, values = list(value.keys()), list(value.values())
    elif isinstance(value, (list, tuple)):
        keys, values = None, list(value)
    else:
        hint = "" if splitter is not None or strategy else " (or set partitioning_strategy to split it)"
        raise TypeError(
            f"task {task!r} fans out over {how}, which must be a list, tuple or dict{hint}; got {type(value).__name__}"
        )
    if len(values) > MAX_PARTITIONS:
        raise ValueError(
            f"task {task!r}: {how} has {len(values)} partitions; the limit is {MAX_PARTITIONS} (MAX_PARTITIONS)"
        )
    return Partitions(values, keys)


def split_upstream(value: Any, *_broadcast: Any, **how: Any) -> Partitions:
    """The split attempt of a mapped task, run on a worker: see :func:`split_value`."""
    return split_value(value, **how)
