"""A task's options as frozen dataclasses: :class:`RetryPolicy` and :class:`TaskOptions`.

They check themselves in ``__post_init__``, so the rules live here once: ``Task(...)``,
``@task(...)``, ``Task.command``/``Task.handler`` and an options object built by hand all
pass through the same checks. ``Task`` also takes the options as flat keywords
(``max_retries=3, timeout_s=60``); :func:`merge_task_options` folds those into the objects and
refuses a field given both ways.

Options whose name ends in ``_s`` take a number of seconds (or a ``timedelta``); a duration
string such as ``"1min"`` goes through the same name without ``_s`` (``timeout="1h"``).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from ._limits import MAX_DURATION_S, MAX_NAME_CHARS, labels_problem, normalize_resources
from ._retry import BACKOFF_STRATEGIES, duration_option, duration_string_problem
from .errors import PipelineValidationError

__all__ = [
    "RetryPolicy",
    "TaskOptions",
    "OptionError",
    "FLAT_OPTIONS",
    "DURATION_ALIASES",
    "merge_task_options",
]

# Durations in messages: "must be a number > 0 (at most 31622400)".
_UPTO = f"(at most {MAX_DURATION_S:.0f})"
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: Task's flat keywords -> (group, field): group "retry" is TaskOptions.retry, None TaskOptions.
FLAT_OPTIONS: dict[str, tuple[str | None, str]] = {
    "max_retries": ("retry", "max_retries"),
    "retry_delay_s": ("retry", "retry_delay_s"),
    "retry_backoff": ("retry", "backoff"),
    "max_retry_delay_s": ("retry", "max_retry_delay_s"),
    "retry_jitter": ("retry", "jitter"),
    "timeout_s": (None, "timeout_s"),
    "resource_requirements": (None, "resource_requirements"),
    "labels": (None, "labels"),
    "priority": (None, "priority"),
    "circuit": (None, "circuit"),
}
#: Flat keywords that also read duration strings ("30s", "1h") -> the ``_s`` keyword they set.
DURATION_ALIASES: dict[str, str] = {
    "timeout": "timeout_s",
    "retry_delay": "retry_delay_s",
    "max_retry_delay": "max_retry_delay_s",
}


class OptionError(PipelineValidationError):
    """One option is invalid; ``field`` names it so ``Task`` can say which keyword it was."""

    def __init__(self, owner: str, field_name: str, problem: str):
        super().__init__(f"{owner}: {field_name} {problem}")
        self.field = field_name
        self.problem = problem


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _seconds(owner: str, name: str, value: Any, *, allow_zero: bool) -> float:
    """An ``_s`` field as float seconds; a string is refused, naming the option that reads it."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, str):
        raise OptionError(owner, name, duration_string_problem(name, value))
    # NaN fails both comparisons; infinity fails the upper bound.
    if _is_number(value) and (0 <= value if allow_zero else 0 < value) and value <= MAX_DURATION_S:
        return float(value)
    bound = ">= 0" if allow_zero else "> 0"
    raise OptionError(owner, name, f"must be a number {bound} {_UPTO}, got {value!r:.80}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a failed task is tried again (the wire ``RetryPolicy``).

    Example: ``RetryPolicy(max_retries=3, retry_delay_s=2, backoff="exponential")``.

    Raises:
        PipelineValidationError: a field is out of range or of the wrong type; the message
            names the field.
    """

    max_retries: int | None = None
    """Retries after the first attempt; None: the pipeline's ``max_retries_per_task`` (else 0)."""
    retry_delay_s: float = 0.0
    """Seconds before the first retry (a number or timedelta; strings: ``Task(retry_delay=...)``)."""
    backoff: str | None = None
    """"fixed", "linear" or "exponential"; None: the pipeline's ``retry_backoff_strategy`` (else fixed)."""
    max_retry_delay_s: float | None = None
    """Cap on one wait in seconds; None: no cap."""
    jitter: float = 0.1
    """Each wait is shortened by up to this fraction (0 to 1), at random, so retries spread out."""

    def __post_init__(self) -> None:
        # Each check starts with the common case (a plain int or float in range) so that
        # building many tasks stays cheap; anything else takes the thorough path.
        owner = "RetryPolicy"
        set_ = object.__setattr__  # frozen: normalise numbers in place, once
        n = self.max_retries
        if n is not None and not (type(n) is int and 0 <= n <= _UINT32_MAX):
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _UINT32_MAX:
                raise OptionError(owner, "max_retries", f"must be an int >= 0 or None, got {n!r:.80}")
        d = self.retry_delay_s
        if not (type(d) is float and 0.0 <= d <= MAX_DURATION_S):
            set_(self, "retry_delay_s", _seconds(owner, "retry_delay_s", d, allow_zero=True))
        if self.backoff is not None and self.backoff not in BACKOFF_STRATEGIES:
            problem = f"must be one of {sorted(BACKOFF_STRATEGIES)} or None, got {self.backoff!r:.80}"
            raise OptionError(owner, "backoff", problem)
        cap = self.max_retry_delay_s
        if cap is not None and not (type(cap) is float and 0.0 < cap <= MAX_DURATION_S):
            set_(self, "max_retry_delay_s", _seconds(owner, "max_retry_delay_s", cap, allow_zero=False))
        j = self.jitter
        if not (type(j) is float and 0.0 <= j <= 1.0):
            if not _is_number(j) or not 0 <= j <= 1:
                raise OptionError(owner, "jitter", f"must be a fraction between 0 and 1, got {j!r:.80}")
            set_(self, "jitter", float(j))


_DEFAULT_RETRY = RetryPolicy()


def _read_only_resources(owner: str, resources: Any) -> Mapping[str, Any]:
    if resources is None:
        return _EMPTY
    if not isinstance(resources, Mapping):
        raise OptionError(owner, "resource_requirements", f"must be a dict, got {type(resources).__name__}")
    try:
        normalize_resources(resources)
    except ValueError as exc:
        raise OptionError(owner, "resource_requirements", str(exc)) from None
    return MappingProxyType(dict(resources))


def _read_only_labels(owner: str, labels: Any) -> Mapping[str, str]:
    if labels is None:
        return _EMPTY
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise OptionError(owner, "labels", f"must map str to str, got {labels!r:.200}")
    problem = labels_problem("labels", labels)
    if problem:
        raise OptionError(owner, "labels", problem.removeprefix("labels "))
    return MappingProxyType(dict(labels))


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Everything about a task but what it runs and what it depends on.

    Example: ``TaskOptions(retry=RetryPolicy(max_retries=2), timeout_s=60, priority=5)``.
    Mappings are copied into read-only views, so an options object never changes.

    Raises:
        PipelineValidationError: a field is out of range or of the wrong type; the message
            names the field.
    """

    retry: RetryPolicy = _DEFAULT_RETRY
    """When and how often a failed attempt is retried."""
    timeout_s: float | None = None
    """Seconds one attempt may run before it fails ``TIMEOUT``; None: no limit."""
    resource_requirements: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """What one attempt needs: ``cpu``, ``memory`` (bytes or "16Gi"), ``gpu``, custom names."""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """Only workers carrying all these labels run the task."""
    priority: int = 0
    """Higher runs first among tasks ready at the same time (a 32-bit int)."""
    circuit: str | None = None
    """The circuit breaker the task's attempts share; None: its own."""

    def __post_init__(self) -> None:
        owner = "TaskOptions"
        set_ = object.__setattr__
        if type(self.retry) is not RetryPolicy and not isinstance(self.retry, RetryPolicy):
            raise OptionError(owner, "retry", f"must be a RetryPolicy, got {type(self.retry).__name__}")
        t = self.timeout_s
        if t is not None and not (type(t) is float and 0.0 < t <= MAX_DURATION_S):
            set_(self, "timeout_s", _seconds(owner, "timeout_s", t, allow_zero=False))
        if self.resource_requirements is not _EMPTY:
            set_(self, "resource_requirements", _read_only_resources(owner, self.resource_requirements))
        if self.labels is not _EMPTY:
            set_(self, "labels", _read_only_labels(owner, self.labels))
        p = self.priority
        if not (type(p) is int and -_INT32_MAX <= p <= _INT32_MAX):
            if isinstance(p, bool) or not isinstance(p, int) or abs(p) > _INT32_MAX:
                raise OptionError(owner, "priority", f"must be a 32-bit int, got {p!r:.80}")
        c = self.circuit
        if c is not None and (not isinstance(c, str) or not c.strip() or len(c) > MAX_NAME_CHARS):
            problem = f"must be a non-empty string of at most {MAX_NAME_CHARS} chars naming a dependency"
            raise OptionError(owner, "circuit", f"{problem}, got {c!r:.80}")

    def __hash__(self) -> int:
        resources, labels = frozenset(self.resource_requirements.items()), frozenset(self.labels.items())
        return hash((self.retry, self.timeout_s, resources, labels, self.priority, self.circuit))

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy does not pickle; rebuild from plain dicts (checked again on load).
        return (
            type(self),
            (
                self.retry,
                self.timeout_s,
                dict(self.resource_requirements),
                dict(self.labels),
                self.priority,
                self.circuit,
            ),
        )


DEFAULT_TASK_OPTIONS = TaskOptions()


_DEFAULTS: dict[type, dict[str, Any]] = {
    cls: {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(cls)
    }
    for cls in (RetryPolicy, TaskOptions)
}
#: Field name -> the flat keyword that sets it (field names are unique across both classes).
_KEYWORD_OF = {field_name: keyword for keyword, (_, field_name) in FLAT_OPTIONS.items()}


def merge_task_options(
    flat: Mapping[str, Any], retry: RetryPolicy | None = None, options: TaskOptions | None = None
) -> TaskOptions:
    """One TaskOptions from flat keywords (None values count as not given) and the objects.

    A flat keyword fills a field the structured form leaves at its default; a field given
    both ways is refused, naming both. Duration strings (``timeout="1h"``) are read here.

    Raises:
        OptionError: a value is invalid; ``field`` is the keyword the caller used.
        PipelineValidationError: a field is given twice.
    """
    given = {k: v for k, v in flat.items() if v is not None}
    if options is not None and not isinstance(options, TaskOptions):
        raise OptionError("Task", "options", f"must be a TaskOptions, got {type(options).__name__}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise OptionError("Task", "retry", f"must be a RetryPolicy, got {type(retry).__name__}")
    base = DEFAULT_TASK_OPTIONS if options is None else options
    if not given and retry is None:
        return base
    for alias, name_s in DURATION_ALIASES.items():
        if alias in given:
            try:
                given[name_s] = duration_option(name_s, given.pop(name_s, None), given.pop(alias))
            except ValueError as exc:
                raise PipelineValidationError(str(exc)) from None
    base_retry = base.retry
    if retry is not None:
        if base_retry != _DEFAULT_RETRY:
            raise PipelineValidationError(
                "retry= and options=TaskOptions(retry=...) both set the retry policy; give one"
            )
        base_retry = retry
    retry_fields: dict[str, Any] = {}
    task_fields: dict[str, Any] = {}
    for key, value in given.items():
        group, field_name = FLAT_OPTIONS[key]
        (retry_fields if group == "retry" else task_fields)[field_name] = value
    try:
        if retry is None and options is None:  # flat keywords alone, the common case: no replace() needed
            return TaskOptions(RetryPolicy(**retry_fields) if retry_fields else _DEFAULT_RETRY, **task_fields)
        for fields_, holder, where in ((retry_fields, base_retry, "retry"), (task_fields, base, "options")):
            for field_name in fields_:
                if getattr(holder, field_name) != _DEFAULTS[type(holder)][field_name]:
                    structured = f"{where}={type(holder).__name__}({field_name}=...)"
                    raise PipelineValidationError(
                        f"{_KEYWORD_OF[field_name]}= and {structured} both set {field_name}; give one"
                    )
        new_retry = dataclasses.replace(base_retry, **retry_fields) if retry_fields else base_retry
        return dataclasses.replace(base, retry=new_retry, **task_fields)
    except OptionError as exc:
        raise OptionError("Task", _KEYWORD_OF.get(exc.field, exc.field), exc.problem) from None
