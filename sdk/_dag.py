"""The pipeline model: tasks, their dependencies, and checking that they form a DAG.

This is what users build (``Pipeline``, ``Task``, ``@task``, ``@pipeline``, ``DataFlow``) and
what turns into a :class:`PipelineSpec` for the coordinator. It is pure Python: nothing here
touches the network. The graph checks (:func:`validate_graph`, in the leaf :mod:`xpipe._graph`)
work on plain names so the coordinator runs the very same checks on specs that clients in
other languages submit.

Upstream results reach a task as positional arguments in ``depends_on`` order; a
``DataFlow`` in ``kwargs`` maps an upstream result (or one key of it) to a named parameter::

    extract = Task("extract", extract_data)
    load = Task("load", load_rows, kwargs={"rows": DataFlow(extract, "rows")})
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from . import _codec
from ._callables import callable_ref, describe_callable
from ._domain import PLACEMENT_STRATEGIES
from ._graph import check_task_name as _check_name
from ._graph import validate_graph
from ._handlers import get_handler
from ._mapping import map_spec
from ._limits import (
    MAX_COMMAND_STDOUT_LIMIT_BYTES,
    MAX_DEPENDS_ON,
    MAX_DURATION_S,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    NAME_RE,
    command_problem,
    normalize_resources,
)
from ._options import (
    DURATION_ALIASES,
    FLAT_OPTIONS,
    OptionError,
    RetryPolicy,
    TaskOptions,
    merge_task_options,
)
from ._policies import FaultTolerance, check_recovery_handler
from ._proto import common_pb2
from ._retry import BACKOFF_STRATEGIES, duration_string_problem, parse_duration_s
from ._scaling import AutoscaleSettings, scaling_from_options
from .errors import PipelineValidationError
from .cache._config import CacheSettings
from .cache._spec import apply_cache
from .security._marks import GOVERNANCE_ATTR, governance_of, mark
from .security._principal import check_name
from .telemetry._tracking import Monitored, Tracking

__all__ = ["Task", "DataFlow", "Pipeline", "task", "pipeline", "validate_graph", "PLACEMENT_STRATEGIES"]


# Durations in messages: "must be a number of seconds >= 0 (at most 31622400)".
_UPTO = f"(at most {MAX_DURATION_S:.0f})"
#: Every option keyword of Task, @task, Task.command and Task.handler.
_TASK_OPTIONS = frozenset({*FLAT_OPTIONS, *DURATION_ALIASES, "retry", "options"})


def _invalid(task_name: Any, field: str, problem: str) -> PipelineValidationError:
    return PipelineValidationError(f"task {task_name!r}: {field} {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_options(where: str, opts: Mapping[str, Any]) -> None:
    unknown = sorted(set(opts) - _TASK_OPTIONS)
    if unknown:
        raise TypeError(f"{where} got unexpected option(s) {unknown}; known: {sorted(_TASK_OPTIONS)}")


def _resources_proto(task_name: str, requirements: Mapping[str, Any]) -> common_pb2.Resources:
    """Map user resource keys (``cpu``/``cpu_cores``, ``memory`` (bytes or "16Gi")/``memory_mb``/
    ``memory_gb``, ``gpu``, custom names; :data:`xpipe._limits.RESOURCE_ALIASES`) onto the
    Resources message, checking every value."""
    try:
        amounts = normalize_resources(requirements)
    except ValueError as exc:
        raise _invalid(task_name, "resource_requirements", str(exc)) from None
    return common_pb2.Resources(
        cpu_cores=amounts.cpu_cores or 0.0, memory_bytes=amounts.memory_bytes or 0, gpu=amounts.gpu or 0,
        custom=amounts.custom,
    )  # fmt: skip


def _task_options(task_name: Any, flat: Mapping[str, Any], retry: Any, options: Any) -> TaskOptions:
    """:func:`merge_task_options`, with the task's name in every error."""
    try:
        return merge_task_options(flat, retry, options)
    except OptionError as exc:
        raise _invalid(task_name, exc.field, exc.problem) from None
    except PipelineValidationError as exc:
        raise PipelineValidationError(f"task {task_name!r}: {exc}") from None


class _OptionAttr:
    """A seed attribute of Task (``task.max_retries``) that lives in the frozen ``task.options``.

    Assigning one builds new options through the same checks as the constructor.
    """

    def __init__(self, group: str | None, field_name: str, *, none_as: Any = None):
        self.group, self.field, self.none_as = group, field_name, none_as

    def __set_name__(self, owner: type, name: str) -> None:
        self.keyword = name

    def __get__(self, task: Task | None, owner: type | None = None) -> Any:
        if task is None:
            return self
        holder = task.options if self.group is None else task.options.retry
        value = getattr(holder, self.field)
        return self.none_as if value is None and self.none_as is not None else value

    def __set__(self, task: Task, value: Any) -> None:
        opts = task.options
        try:
            if self.group is None:
                task.options = dataclasses.replace(opts, **{self.field: value})
            else:
                retry = dataclasses.replace(opts.retry, **{self.field: value})
                task.options = dataclasses.replace(opts, retry=retry)
        except OptionError as exc:
            raise _invalid(task.name, self.keyword, exc.problem) from None


class DataFlow:
    """Binds an upstream task's result, or ``result[key]``, to a named parameter.

    Use it as a value in a task's ``kwargs``. Its source also orders the tasks, but is not
    passed positionally unless it is also listed in ``depends_on``.

    Attributes:
        source: name of the upstream task.
        key: the key to take from the upstream result, or None for the whole result.
    """

    __slots__ = ("source", "key")

    def __init__(self, source: Task | str, key: str | None = None):
        if isinstance(source, Task):
            source = source.name
        if not isinstance(source, str) or len(source) > MAX_NAME_CHARS or NAME_RE.fullmatch(source) is None:
            raise PipelineValidationError(f"DataFlow source must be a Task or a task name, got {source!r}")
        if key is not None and (not isinstance(key, str) or len(key) > MAX_TEXT_CHARS):
            raise PipelineValidationError(
                f"DataFlow key must be a string of at most {MAX_TEXT_CHARS} chars or None, got {key!r:.80}"
            )
        self.source: str = source
        self.key: str | None = key

    def __repr__(self) -> str:
        return (
            f"DataFlow({self.source!r})" if self.key is None else f"DataFlow({self.source!r}, {self.key!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataFlow):
            return NotImplemented
        return (self.source, self.key) == (other.source, other.key)

    def __hash__(self) -> int:
        return hash((self.source, self.key))


class Task:
    """One unit of work: a Python callable, a named handler, or a command.

    ``Task(name, func)`` runs ``func`` on a worker. A subclass may pass no ``func``: it then
    runs its overridden ``run`` method, or else the method named like the task::

        class Partitioner(Task):
            def __init__(self):
                super().__init__("partition")
            def partition(self, data): ...

    Calling a Task (``t(x)``) calls its function locally, so decorated functions stay
    testable. Use :meth:`Task.command` and :meth:`Task.handler` for the other kinds.

    Attributes:
        name: unique within its pipeline.
        kind: ``"python"``, ``"command"`` or ``"handler"``.
        func: the callable (python tasks), else None.
        depends_on: upstream task names; their results are the positional arguments.
        args, kwargs: extra arguments; ``DataFlow`` values in ``kwargs`` are bindings.
        argv, env, cwd: the command (command tasks).
        handler_name: the handler to run (handler tasks).
        options: the frozen :class:`TaskOptions` (retry policy, timeout, resources, labels,
            priority, circuit); ``max_retries``, ``timeout_s``, ... read it.
    """

    def __init__(
        self,
        name: str,
        func: Callable[..., Any] | None = None,
        depends_on: Iterable[Task | str] = (),
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        retry: RetryPolicy | None = None,
        options: TaskOptions | None = None,
        max_retries: int | None = None,
        retry_delay_s: float | None = None,
        retry_delay: str | float | timedelta | None = None,
        retry_backoff: str | None = None,
        max_retry_delay_s: float | None = None,
        max_retry_delay: str | float | timedelta | None = None,
        retry_jitter: float | None = None,
        timeout_s: float | None = None,
        timeout: str | float | timedelta | None = None,
        resource_requirements: dict | None = None,
        labels: dict[str, str] | None = None,
        priority: int | None = None,
        circuit: str | None = None,
        cache: bool | None = None,
        cache_ttl: str | float | timedelta | None = None,
        cache_version: str | int | None = None,
        parallelism: int | None = None,
        partitioning_strategy: Any = None,
        expand: bool = False,
    ):
        """Options come as ``options=TaskOptions(...)`` and ``retry=RetryPolicy(...)``, or as flat
        keywords named like their fields (see :data:`xpipe._options.FLAT_OPTIONS`); None means
        not given. ``_s`` keywords take seconds; ``timeout``, ``retry_delay`` and
        ``max_retry_delay`` also read strings such as ``"1h"``. A field given both flat and
        structured is refused. ``cache=True`` caches the task's result (docs/cache.md), for
        ``cache_ttl`` ("1h") if given; bump ``cache_version`` to make old entries misses.
        structured is refused.

        ``parallelism``, ``partitioning_strategy`` and ``expand`` make the task fan out over
        its first upstream's result, one sub-task per partition (see :mod:`xpipe._mapping`
        and :meth:`Task.map`); they are checked when the pipeline is built.
        """
        flat = None
        if (
            max_retries is not None or retry_delay_s is not None or retry_delay is not None
            or retry_backoff is not None or max_retry_delay_s is not None or max_retry_delay is not None
            or retry_jitter is not None or timeout_s is not None or timeout is not None
            or resource_requirements is not None or labels is not None or priority is not None
            or circuit is not None
        ):  # fmt: skip
            flat = {
                "max_retries": max_retries, "retry_delay_s": retry_delay_s, "retry_delay": retry_delay,
                "retry_backoff": retry_backoff, "max_retry_delay_s": max_retry_delay_s,
                "max_retry_delay": max_retry_delay, "retry_jitter": retry_jitter, "timeout_s": timeout_s,
                "timeout": timeout, "resource_requirements": resource_requirements, "labels": labels,
                "priority": priority, "circuit": circuit,
            }  # fmt: skip
        self._setup(name, "python", depends_on, args, kwargs, retry=retry, options=options, flat=flat)
        if func is None:
            func = self._own_callable()
        elif not callable(func):
            raise _invalid(name, "func", f"must be callable, got {type(func).__name__}")
        self.func: Callable[..., Any] | None = func
        if cache is not None or cache_ttl is not None or cache_version is not None:
            try:
                settings = CacheSettings.make(f"task {name!r}", cache, cache_ttl, cache_version)
            except ValueError as exc:
                raise PipelineValidationError(str(exc)) from None
            self.cache = False if cache is False else settings  # False: opted out of the pipeline's
        #: Fan-out (read at to_proto time, so a subclass may set them after super().__init__).
        self.parallelism: int | None = parallelism
        self.partitioning_strategy: Any = partitioning_strategy
        self.expand: bool = expand

    @staticmethod
    def map(
        name: str,
        func: Callable[..., Any],
        over: Task | str,
        *,
        parallelism: int | None = None,
        partitioning_strategy: Any = None,
        depends_on: Iterable[Task | str] = (),
        **options: Any,
    ) -> Task:
        """A task that runs ``func`` once per partition of ``over``'s result (dynamic fan-out).

        ``over``'s result must be a list, tuple or dict (or is split by
        ``partitioning_strategy``); sub-task ``name[i]`` gets partition i as its first
        argument, then the results of ``depends_on`` and the task's ``args``/``kwargs``, and
        the task's result is the list (or dict) of their results in partition order::

            squares = Task.map("square", lambda x: x * x, over=numbers, parallelism=8)

        ``options`` are the keyword options of :class:`Task` (``max_retries``, ...): each
        sub-task is retried and timed out by them.
        """
        over_name = over.name if isinstance(over, Task) else over
        others = [depends_on] if isinstance(depends_on, (str, Task)) else list(depends_on)
        upstream = [over, *(d for d in others if (d.name if isinstance(d, Task) else d) != over_name)]
        return Task(
            name, func, upstream, parallelism=parallelism, partitioning_strategy=partitioning_strategy,
            expand=True, **options,
        )  # fmt: skip

    def _setup(
        self,
        name: Any,
        kind: str,
        depends_on: Any,
        args: Any,
        kwargs: Any,
        *,
        retry: Any = None,
        options: Any = None,
        flat: Mapping[str, Any] | None = None,
    ) -> None:
        """Check and store everything but the callable, naming the task and field on error."""
        self.name: str = _check_name(name)
        self.kind: str = kind
        self.func = None
        self.argv: list[str] | None = None
        self.env: dict[str, str] | None = None
        self.cwd: str | None = None
        self.stdout_limit_bytes: int = 0
        self.handler_name: str | None = None
        self.depends_on: list[str] = self._check_depends_on(depends_on)

        if not isinstance(args, (tuple, list)):
            raise _invalid(name, "args", f"must be a tuple or list, got {type(args).__name__}")
        for position, value in enumerate(args):
            if isinstance(value, DataFlow):
                raise _invalid(name, "args", f"[{position}] is a DataFlow; bind it by name in kwargs instead")
        self.args: tuple = tuple(args)
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise _invalid(name, "kwargs", f"must be a dict, got {type(kwargs).__name__}")
        for key in kwargs:
            if not isinstance(key, str):
                raise _invalid(name, "kwargs", f"has a non-string key {key!r}")
        self.kwargs: dict[str, Any] = dict(kwargs)
        #: Everything else about the task, frozen; the option attributes below read it.
        self.options: TaskOptions = _task_options(name, flat or {}, retry, options)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The frozen retry policy (``self.options.retry``)."""
        return self.options.retry

    # The seed's flat attributes, read from (and, when assigned, re-checked into) self.options.
    max_retries = _OptionAttr("retry", "max_retries", none_as=0)
    retry_delay_s = _OptionAttr("retry", "retry_delay_s")
    #: "fixed", "linear" or "exponential"; None: the pipeline's default, else fixed.
    retry_backoff = _OptionAttr("retry", "backoff")
    max_retry_delay_s = _OptionAttr("retry", "max_retry_delay_s")
    retry_jitter = _OptionAttr("retry", "jitter")
    timeout_s = _OptionAttr(None, "timeout_s")
    resource_requirements = _OptionAttr(None, "resource_requirements")
    labels = _OptionAttr(None, "labels")
    priority = _OptionAttr(None, "priority")
    #: The circuit breaker this task's attempts share (when the pipeline enables breakers);
    #: None: its own, "<pipeline>/<task>".
    circuit = _OptionAttr(None, "circuit")
    #: What its attempts record (``@pipeline.track_metric`` and friends); None: nothing but
    #: ``record_metric`` calls.
    tracking: Tracking | None = None
    #: Its result cache settings (``cache=True``, docs/cache.md); None: not cached (unless
    #: the pipeline's ``enable_cache`` applies).
    cache: CacheSettings | bool | None = None

    def _check_depends_on(self, depends_on: Any) -> list[str]:
        if isinstance(depends_on, (str, Task)):  # one dependency given bare
            depends_on = [depends_on]
        try:
            entries = list(depends_on)
        except TypeError:
            raise _invalid(
                self.name, "depends_on", f"must be a list of tasks or names, got {depends_on!r}"
            ) from None
        if len(entries) > MAX_DEPENDS_ON:
            raise _invalid(self.name, "depends_on", f"has {len(entries)} entries; the limit is {MAX_DEPENDS_ON}")
        names: list[str] = []
        seen: set[str] = set()
        for entry in entries:
            dep = entry.name if isinstance(entry, Task) else entry
            if not isinstance(dep, str) or len(dep) > MAX_NAME_CHARS or NAME_RE.fullmatch(dep) is None:
                raise _invalid(self.name, "depends_on", f"entry {entry!r} is neither a Task nor a task name")
            if dep == self.name:
                raise PipelineValidationError(
                    f"task {self.name!r} depends on itself", cycle=[self.name, self.name]
                )
            if dep in seen:
                raise _invalid(self.name, "depends_on", f"lists {dep!r} twice")
            seen.add(dep)
            names.append(dep)
        return names

    def _own_callable(self) -> Callable[..., Any]:
        """For a subclass given no func: its ``run`` override, else the method named like the task."""
        cls = type(self)
        if cls.run is not Task.run:
            return self.run
        for klass in cls.__mro__:
            if klass is Task:
                break
            if self.name in vars(klass):
                method = getattr(self, self.name)
                if callable(method):
                    return method
                break
        raise PipelineValidationError(
            f"task {self.name!r} has no function: pass func, or subclass Task and define "
            f"run() or a method named {self.name!r}"
        )

    # -- other kinds ---------------------------------------------------------------------

    @staticmethod
    def command(
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        depends_on: Iterable[Task | str] = (),
        stdout_limit_bytes: int = 0,
        **opts: Any,
    ) -> Task:
        """A task that runs ``argv`` on a worker; its stdout and exit code are the result.

        The result keeps the last ``stdout_limit_bytes`` of stdout (0: 64 KiB, the logs'
        tail; at most 64 MiB): raise it for a command whose stdout is its data. A non-zero
        exit fails the task, and the failed task keeps the same result
        (``Client.task_result(...).value``).
        ``opts`` are the keyword options of :class:`Task` (``max_retries``, ``timeout_s``, ...).
        """
        _check_options("Task.command()", opts)
        self = Task.__new__(Task)
        retry, options = opts.pop("retry", None), opts.pop("options", None)
        self._setup(name, "command", depends_on, (), None, retry=retry, options=options, flat=opts)
        if (
            isinstance(argv, (str, bytes))
            or not isinstance(argv, Sequence)
            or not argv
            or not all(isinstance(a, str) for a in argv)
        ):
            raise _invalid(name, "argv", f"must be a non-empty list of strings, got {argv!r}")
        if env is not None and (
            not isinstance(env, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise _invalid(name, "env", f"must map str to str, got {env!r}")
        if cwd is not None and not isinstance(cwd, str):
            raise _invalid(name, "cwd", f"must be a string, got {cwd!r}")
        problem = command_problem(argv, env or {}, cwd or "")
        if problem:
            raise PipelineValidationError(f"task {name!r}: {problem}")
        if (
            isinstance(stdout_limit_bytes, bool) or not isinstance(stdout_limit_bytes, int)
            or not 0 <= stdout_limit_bytes <= MAX_COMMAND_STDOUT_LIMIT_BYTES
        ):  # fmt: skip
            raise _invalid(
                name, "stdout_limit_bytes",
                f"must be an int from 0 to {MAX_COMMAND_STDOUT_LIMIT_BYTES} (64 MiB), got {stdout_limit_bytes!r}",
            )  # fmt: skip
        self.stdout_limit_bytes = stdout_limit_bytes
        self.argv = list(argv)
        self.env = dict(env) if env else {}
        self.cwd = cwd
        return self

    @staticmethod
    def handler(
        name: str,
        handler_name: str,
        *,
        depends_on: Iterable[Task | str] = (),
        args: tuple = (),
        kwargs: dict | None = None,
        **opts: Any,
    ) -> Task:
        """A task that runs the handler workers advertise as ``handler_name`` (any language).

        ``opts`` are the keyword options of :class:`Task` (``max_retries``, ``timeout_s``, ...).
        """
        _check_options("Task.handler()", opts)
        self = Task.__new__(Task)
        retry, options = opts.pop("retry", None), opts.pop("options", None)
        self._setup(name, "handler", depends_on, args, kwargs, retry=retry, options=options, flat=opts)
        if not isinstance(handler_name, str) or not 0 < len(handler_name.strip()) <= MAX_NAME_CHARS:
            raise _invalid(
                name, "handler_name", f"must be a non-empty string of up to {MAX_NAME_CHARS} chars, got {handler_name!r:.80}"
            )
        self.handler_name = handler_name
        return self

    # -- use -------------------------------------------------------------------------------

    @property
    def flows(self) -> dict[str, DataFlow]:
        """The ``DataFlow`` bindings in ``kwargs``, by parameter name."""
        return {key: value for key, value in self.kwargs.items() if isinstance(value, DataFlow)}

    @property
    def upstream(self) -> list[str]:
        """Every task this one must wait for: ``depends_on``, then DataFlow sources."""
        names = list(self.depends_on)
        for flow in self.flows.values():
            if flow.source not in names:
                names.append(flow.source)
        return names

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task's callable here; subclasses may override this to define the task."""
        return self(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "python":
            assert self.func is not None
            return self.func(*args, **kwargs)
        if self.kind == "handler":
            assert self.handler_name is not None
            return get_handler(self.handler_name)(*args, **kwargs)
        raise TypeError(f"command task {self.name!r} runs on a worker; it cannot be called as a function")

    def __getstate__(self) -> dict[str, Any]:
        # A subclass's own bound method refers back to the instance; re-resolve it on load
        # instead of pickling the instance a second time inside its own state.
        state = self.__dict__.copy()
        func = state.get("func")
        if getattr(func, "__self__", None) is self:
            state["func"] = None
            state["_func_is_own_method"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        own = state.pop("_func_is_own_method", False)
        self.__dict__.update(state)
        if own:
            self.func = self._own_callable()

    def to_proto(self, code: dict[str, bytes]) -> common_pb2.TaskSpec:
        """Build the TaskSpec; pickled callables are added to ``code`` under their hash.

        Raises:
            SerializationError: the callable or the arguments cannot be serialised.
        """
        spec = common_pb2.TaskSpec(name=self.name, depends_on=self.depends_on)
        if self.kind == "python":
            import_path, data, code_hash = callable_ref(self.func)  # type: ignore[arg-type]
            if data is not None:
                code[code_hash] = data
            spec.python.import_path = import_path
            spec.python.code_hash = code_hash
        elif self.kind == "command":
            spec.command.argv.extend(self.argv or ())
            spec.command.env.update(self.env or {})
            spec.command.cwd = self.cwd or ""
            spec.command.stdout_limit_bytes = self.stdout_limit_bytes
        else:
            spec.handler.name = self.handler_name or ""
        flows = self.flows
        plain_kwargs = {key: value for key, value in self.kwargs.items() if key not in flows}
        if self.args or plain_kwargs:
            spec.args.CopyFrom(
                _codec.encode(
                    (tuple(self.args), plain_kwargs), "pickle", what=f"arguments of task {self.name!r}"
                )
            )
        for parameter, flow in flows.items():
            spec.flows.add(source_task=flow.source, key=flow.key or "", parameter=parameter)
        # The options checked themselves when made (they are frozen), so these fit the spec.
        opts = self.options
        retry = opts.retry
        spec.retry.max_retries = retry.max_retries or 0
        spec.retry.retry_delay_s = retry.retry_delay_s
        spec.retry.backoff = BACKOFF_STRATEGIES[retry.backoff or "fixed"]
        spec.retry.max_retry_delay_s = retry.max_retry_delay_s or 0.0
        spec.retry.jitter = retry.jitter
        if opts.timeout_s:
            spec.timeout_s = opts.timeout_s
        if opts.priority:
            spec.priority = opts.priority
        if opts.labels:
            spec.labels.update(opts.labels)
        if opts.circuit:
            spec.circuit = opts.circuit
        if opts.resource_requirements:
            spec.resources.CopyFrom(_resources_proto(self.name, opts.resource_requirements))
        if self.tracking is not None:
            self.tracking.apply(spec)
        try:
            mapping = map_spec(self)
        except ValueError as exc:
            raise _invalid(self.name, *exc.args) from None
        if mapping is not None:
            spec.map.CopyFrom(mapping)
        marks = governance_of(self, self.func)
        if marks is not None:
            marks.apply(spec)
        return spec

    def __repr__(self) -> str:
        what = {
            "python": lambda: describe_callable(self.func),
            "command": lambda: " ".join(self.argv or ()),
            "handler": lambda: f"handler {self.handler_name!r}",
        }[self.kind]()
        deps = f", depends_on={self.depends_on!r}" if self.depends_on else ""
        return f"<{type(self).__name__} {self.name!r} {self.kind}: {what}{deps}>"


def _make_task(func: Callable[..., Any], name: str | None, depends_on: Any, opts: dict[str, Any]) -> Task:
    if isinstance(func, Task) or not callable(func):
        raise PipelineValidationError(f"@task must decorate a function, got {func!r}")
    task_name = name if name is not None else getattr(func, "__name__", None)
    made = Task(task_name, func, depends_on, **opts)  # type: ignore[arg-type]
    # Keep __name__/__doc__/__module__/__qualname__ so the Task reads like the function;
    # updated=() leaves the Task's own attributes alone.
    functools.update_wrapper(made, func, updated=())
    return made


def task(
    name: str | Callable[..., Any] | None = None,
    *,
    depends_on: Iterable[Task | str] = (),
    **opts: Any,
) -> Any:
    """Decorator turning a function into a :class:`Task` (named after it by default).

    Works as ``@task``, ``@task()`` and ``@task("extract", depends_on=["other"], ...)``;
    ``opts`` are passed to :class:`Task` (``args``, ``kwargs``, ``max_retries``, ...).
    """
    if callable(name) and not isinstance(name, str):
        return _make_task(name, None, depends_on, opts)
    if name is not None and not isinstance(name, str):
        raise PipelineValidationError(f"@task name must be a string, got {name!r}")

    def decorate(func: Callable[..., Any]) -> Task:
        return _make_task(func, name, depends_on, opts)

    return decorate


class Pipeline(Monitored):
    """A named set of tasks forming a DAG, ready to submit.

    Tasks keep their insertion order; :meth:`validate` returns a topological order. A task
    may name a dependency before that dependency is added; :meth:`validate` (called by
    :meth:`to_proto`) checks that every name resolves and that there is no cycle. What its
    tasks record (``enable_monitoring``, ``track_metric``, ...) comes from
    :class:`~xpipe.telemetry._tracking.Monitored`.
    """

    def __init__(self, name: str, *, description: str = "", namespace: str | None = None):
        if not isinstance(name, str) or not name.strip() or "/" in name or len(name) > MAX_NAME_CHARS:
            raise PipelineValidationError(
                f"invalid pipeline name {name!r:.80}: a non-empty string of at most {MAX_NAME_CHARS} chars, without '/'"
            )
        if not isinstance(description, str):
            raise PipelineValidationError(f"pipeline {name!r}: description must be a string")
        if namespace is not None:
            try:
                check_name("namespace", namespace)
            except ValueError as exc:
                raise PipelineValidationError(f"pipeline {name!r}: {exc}") from None
        #: The namespace its runs belong to (RBAC scopes runs by it); None: the client's, else "default".
        self.namespace = namespace
        self.name = name
        self.description = description
        self._tasks: dict[str, Task] = {}
        #: Set by :meth:`configure_fault_tolerance`; None: the defaults.
        self.fault_tolerance: FaultTolerance | None = None
        #: Set by :meth:`configure_placement` (or ``PipelineManager.optimize_task_placement``);
        #: None: the coordinator's default, ``resource_balanced``.
        self.placement_strategy: str | None = None
        #: How long a task no registered worker could fit waits for one to join; 0: fail at once.
        self.wait_for_resources_s: float = 0.0
        #: Set by :meth:`recovery_handler`; None: a task that fails for good just fails.
        self.recovery_handler_func: Callable[..., Any] | None = None
        #: The function ``@pipeline`` built it from, which hot reload re-runs; None: built by hand.
        self.builder: Callable[[], Any] | None = None

    def recovery_handler(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: decide what happens when a task of this pipeline fails for good.

        ``func(failed_task, error, context)`` runs on a worker (the coordinator runs no user
        code) once a task has no retries left. ``failed_task`` is its name, ``error`` a dict
        with ``error_type``, ``exception_type``, ``message`` and ``traceback``, ``context`` a
        dict with ``run_id``, ``pipeline`` and ``attempt``. It returns one of:

        * ``"halt_pipeline"``: the task fails and everything unfinished is cancelled;
        * ``"skip"``: the task ends SKIPPED and its dependents get None;
        * ``"continue"``: the task fails, its dependents do not run, other branches go on;
        * ``"retry_with_fallback"``: one more attempt; if it fails too, the task's
          ``@handle_errors(fallback=...)`` value is used if it has one, else it fails.

        A handler that raises, or returns anything else, counts as ``"continue"``; the
        task's error message says so. The function is returned unchanged.

        Raises:
            TypeError: ``func`` cannot be called with (failed_task, error, context).
        """
        self.recovery_handler_func = check_recovery_handler(func, where=f"pipeline {self.name!r}")
        return func

    def add_task(self, task: Task) -> Task:
        """Add one task and return it.

        Raises:
            PipelineValidationError: not a Task, or its name is already taken.
        """
        self.add_tasks([task])
        return task

    def add_tasks(self, tasks: Iterable[Task]) -> None:
        """Add several tasks at once; on any error, none of them is added.

        Raises:
            PipelineValidationError: an item is not a Task, or a name is taken or repeated.
        """
        batch: dict[str, Task] = {}
        for item in tasks:
            if not isinstance(item, Task):
                raise PipelineValidationError(
                    f"pipeline {self.name!r}: cannot add {item!r} ({type(item).__name__}); expected a Task"
                )
            if item.name in self._tasks or item.name in batch:
                raise PipelineValidationError(f"pipeline {self.name!r}: duplicate task name {item.name!r}")
            batch[item.name] = item
        self._tasks.update(batch)

    def task(self, name: str | Callable[..., Any] | None = None, **opts: Any) -> Any:
        """Decorator: make a :class:`Task` from a function and add it to this pipeline.

        Works as ``@p.task``, ``@p.task()`` and ``@p.task("extract", depends_on=[...])``.
        """
        if callable(name) and not isinstance(name, str):
            return self.add_task(task(**opts)(name))

        def decorate(func: Callable[..., Any]) -> Task:
            return self.add_task(task(name, **opts)(func))

        return decorate

    #: Set by :meth:`configure_auto_scaling`; None: the cluster's autoscaling settings apply.
    auto_scaling: AutoscaleSettings | None = None

    def configure_auto_scaling(
        self,
        *,
        min_workers: int = 1,
        max_workers: int = 10,
        scale_up_threshold: float = 0.8,
        scale_down_threshold: float = 0.3,
        scale_up_cooldown: str | float | timedelta = "1min",
        scale_down_cooldown: str | float | timedelta = "5min",
    ) -> AutoscaleSettings:
        """Bound the cluster's worker count while a run of this pipeline is active.

        The coordinator's autoscaler (``--autoscale-provider``) applies the bounds of every
        pipeline with active runs: the highest ``min_workers`` and the lowest
        ``max_workers`` win, never above the operator's ``--autoscale-ceiling-workers``.
        Thresholds are fractions of utilization (busy slots / slots, or CPU); cooldowns are
        seconds, a timedelta or strings like "5min". See docs/autoscaling.md.

        Raises:
            PipelineValidationError: a setting out of range (the message names it).
        """
        try:
            self.auto_scaling = scaling_from_options(
                min_workers=min_workers, max_workers=max_workers, scale_up_threshold=scale_up_threshold,
                scale_down_threshold=scale_down_threshold, scale_up_cooldown=scale_up_cooldown,
                scale_down_cooldown=scale_down_cooldown,
            )  # fmt: skip
        except ValueError as exc:
            raise PipelineValidationError(f"pipeline {self.name!r}: configure_auto_scaling: {exc}") from None
        return self.auto_scaling

    #: Set by :meth:`enable_cache`: the cache settings of tasks that set none; None: off.
    cache_default: CacheSettings | None = None

    def enable_cache(self, *, ttl: str | float | timedelta | None = None, version: str | int | None = None) -> Pipeline:
        """Cache the result of every task of this pipeline that sets no ``cache`` itself.

        For pipelines of pure tasks; a side-effecting task opts out with ``cache=False``.
        See docs/cache.md. Returns the pipeline, for chaining.
        """
        try:
            self.cache_default = CacheSettings.make(f"pipeline {self.name!r}", True, ttl, version)
        except ValueError as exc:
            raise PipelineValidationError(str(exc)) from None
        return self

    def configure_fault_tolerance(
        self,
        *,
        checkpoint_interval: str | float | timedelta | None = None,
        checkpoint_interval_s: float | timedelta | None = None,
        max_retries_per_task: int = 0,
        retry_backoff_strategy: str = "fixed",
        failure_isolation: bool = True,
        circuit_breaker_enabled: bool = False,
        circuit_failure_threshold: int = 5,
        circuit_window: str | float | timedelta | None = None,
        circuit_window_s: float | timedelta | None = None,
        circuit_open: str | float | timedelta | None = None,
        circuit_open_s: float | timedelta | None = None,
    ) -> FaultTolerance:
        """Set the run-wide fault-tolerance policy; returns it (see :class:`FaultTolerance`).

        ``max_retries_per_task`` and ``retry_backoff_strategy`` are defaults for tasks that
        set no ``max_retries`` / ``retry_backoff`` of their own. With ``failure_isolation``
        (the default) branches that do not depend on a failed task run on; without it the
        first failure cancels every task still pending or running. Either way the run
        ends failed.

        With ``circuit_breaker_enabled``, ``circuit_failure_threshold`` failed attempts of a
        task (or of tasks sharing a ``circuit=``) within ``circuit_window_s`` (default 60)
        open its circuit: further attempts fail at once with ``CIRCUIT_OPEN`` until, after
        ``circuit_open_s`` (default 30), one probe attempt succeeds.

        Each duration is given as ``<name>_s`` in seconds (a number or timedelta) or as
        ``<name>``, which also reads strings: ``circuit_window="2min"``,
        ``checkpoint_interval="5min"``. A string given to an ``_s`` name is refused.

        Raises:
            PipelineValidationError: an argument is out of range or of the wrong type, or a
                duration is given both ways.
        """
        try:
            self.fault_tolerance = FaultTolerance.build(
                checkpoint_interval=checkpoint_interval,
                checkpoint_interval_s=checkpoint_interval_s,
                max_retries_per_task=max_retries_per_task,
                retry_backoff_strategy=retry_backoff_strategy,
                failure_isolation=failure_isolation,
                circuit_breaker_enabled=circuit_breaker_enabled,
                circuit_failure_threshold=circuit_failure_threshold,
                circuit_window=circuit_window,
                circuit_window_s=circuit_window_s,
                circuit_open=circuit_open,
                circuit_open_s=circuit_open_s,
            )
        except ValueError as exc:
            raise PipelineValidationError(f"pipeline {self.name!r}: configure_fault_tolerance: {exc}") from None
        return self.fault_tolerance

    def configure_placement(
        self,
        *,
        strategy: str | None = None,
        wait_for_resources_s: float | timedelta | None = None,
        wait_for_resources: str | float | timedelta | None = None,
    ) -> None:
        """Choose how this pipeline's tasks are placed (arguments left None are unchanged).

        Args:
            strategy: one of :data:`PLACEMENT_STRATEGIES`.
            wait_for_resources_s: a task that no registered worker could ever fit (too few
                cores, no GPU, no worker with its labels) waits this long for a fitting worker
                to join before it fails with ``RESOURCE_EXHAUSTION``; 0 fails it at once.
            wait_for_resources: the same as a duration that may be a string ("5min").

        Raises:
            PipelineValidationError: an unknown strategy, a negative wait, or the wait given
                both ways.
        """
        where = f"pipeline {self.name!r}"
        if strategy is not None:
            check_strategy(strategy, where=where)
        wait_s = wait_option(wait_for_resources_s, wait_for_resources, where=where)
        # Everything checked: change nothing unless all of it is valid.
        if strategy is not None:
            self.placement_strategy = strategy
        if wait_s is not None:
            self.wait_for_resources_s = wait_s

    @property
    def tasks(self) -> dict[str, Task]:
        """A copy of the tasks by name, in insertion order."""
        return dict(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Task):
            return self._tasks.get(item.name) is item
        return item in self._tasks

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"pipeline {self.name!r} has no task {name!r}") from None

    def enable_lineage(self) -> Pipeline:
        """Record the lineage of every task of this pipeline (as ``@track_data_lineage`` on each).

        Sets ``PipelineSpec.lineage``; see ``PipelineManager.get_lineage``. Returns the pipeline.
        """
        return mark(self, track_lineage=True)

    def validate(self) -> list[str]:
        """Check the graph and return the task names in a topological order.

        Raises:
            PipelineValidationError: no tasks, an unknown dependency, or a cycle.
        """
        if not self._tasks:
            raise PipelineValidationError(f"pipeline {self.name!r} has no tasks; add at least one")
        try:
            return validate_graph(list(self._tasks), {name: t.upstream for name, t in self._tasks.items()})
        except PipelineValidationError as exc:
            raise PipelineValidationError(
                f"pipeline {self.name!r}: {exc}", cycle=exc.cycle, unknown=exc.unknown
            ) from None

    def to_proto(self, *, retry_on_failure: bool = True) -> common_pb2.PipelineSpec:
        """Validate, then build the PipelineSpec (each pickled callable included once).

        Raises:
            PipelineValidationError: the graph is invalid.
            SerializationError: a callable or an argument cannot be serialised.
        """
        self.validate()
        code: dict[str, bytes] = {}
        specs = [t.to_proto(code) for t in self._tasks.values()]
        handler = None
        if self.recovery_handler_func is not None:
            import_path, data, code_hash = callable_ref(self.recovery_handler_func)
            if data is not None:
                code[code_hash] = data
            handler = common_pb2.PythonCall(import_path=import_path, code_hash=code_hash)
        ft = self.fault_tolerance
        if ft is not None:  # pipeline-wide retry defaults for tasks that set none
            for t, spec in zip(self._tasks.values(), specs):
                retry = t.options.retry
                if retry.max_retries is None:
                    spec.retry.max_retries = ft.max_retries_per_task
                if retry.backoff is None:
                    spec.retry.backoff = BACKOFF_STRATEGIES[ft.retry_backoff_strategy]
                # The task process paces its own xpipe.checkpoint() saves (xpipe._checkpoint).
                spec.checkpoint_interval_s = ft.checkpoint_interval_s
        made = common_pb2.PipelineSpec(
            name=self.name,
            tasks=specs,
            code=[common_pb2.CodeBlob(code_hash=h, data=data) for h, data in code.items()],
            retry_on_failure=retry_on_failure,
        )
        if ft is not None:
            made.fault_tolerance.CopyFrom(ft.to_proto())
        if self.auto_scaling is not None:
            made.autoscale.CopyFrom(self.auto_scaling.to_proto())
        if handler is not None:
            made.recovery_handler.CopyFrom(handler)
        if self.placement_strategy:
            made.placement_strategy = self.placement_strategy
        made.wait_for_resources_s = self.wait_for_resources_s
        if self.namespace:
            made.namespace = self.namespace
        apply_cache(self, made)  # cached tasks get their CacheSpec (the default levels until a manager sets its own)
        self._monitor_spec(made)
        marks = governance_of(self)
        if marks is not None:  # a pipeline's marks apply to every task
            for spec in made.tasks:  # (the message holds copies of ``specs``)
                marks.apply(spec)
            made.lineage = marks.track_lineage
        return made

    def __repr__(self) -> str:
        names = list(self._tasks)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"<Pipeline {self.name!r} with {len(names)} task(s): {shown}>"


def check_strategy(strategy: Any, *, where: str) -> str:
    """Return ``strategy`` if it names a placement strategy; raise naming the known ones."""
    if strategy not in PLACEMENT_STRATEGIES:
        raise PipelineValidationError(
            f"{where}: unknown placement strategy {strategy!r}; known: {', '.join(PLACEMENT_STRATEGIES)}"
        )
    return strategy


def wait_option(
    seconds: float | timedelta | None, duration: str | float | timedelta | None, *, where: str
) -> float | None:
    """The ``wait_for_resources_s``/``wait_for_resources`` pair read as seconds; None if neither is given.

    Raises:
        PipelineValidationError: both are given, or the value is not a duration within range.
    """
    if seconds is not None and duration is not None:
        raise PipelineValidationError(f"{where}: wait_for_resources= and wait_for_resources_s= are the same option; give one")
    if seconds is not None:
        return check_wait_s(seconds, where=where)
    if duration is None:
        return None
    try:
        wait_s = parse_duration_s(duration)
    except ValueError as exc:
        raise PipelineValidationError(f"{where}: wait_for_resources: {exc}") from None
    return check_wait_s(wait_s, where=where)


def check_wait_s(value: Any, *, where: str) -> float:
    """``wait_for_resources_s`` as finite seconds >= 0 (a timedelta is accepted too)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, str):
        problem = duration_string_problem("wait_for_resources_s", value)
        raise PipelineValidationError(f"{where}: wait_for_resources_s {problem}")
    if not _is_number(value) or not 0 <= value <= MAX_DURATION_S:
        raise PipelineValidationError(f"{where}: wait_for_resources_s must be a number of seconds >= 0 {_UPTO}, got {value!r}")
    return float(value)


def pipeline(name: str) -> Callable[[Callable[[], Any]], Pipeline]:
    """Decorator: call the function once and make a :class:`Pipeline` of the tasks it returns.

    The function returns a list of Tasks (or a Pipeline, whose tasks are taken); the result
    is validated, named ``name``, and described by the function's docstring.

    Raises:
        PipelineValidationError: the function returned something other than Tasks, or the
            tasks do not form a valid DAG.
    """
    if callable(name) and not isinstance(name, str):  # bare @pipeline
        return pipeline(name.__name__)(name)  # type: ignore[return-value]
    Pipeline(name)  # check the name now, before the function runs

    def decorate(build: Callable[[], Any]) -> Pipeline:
        result = build()
        description = inspect.getdoc(build) or ""
        where = f"@pipeline({name!r}) function {getattr(build, '__qualname__', build)!s}"
        if isinstance(result, Pipeline):
            items: list[Any] = list(result)
            description = result.description or description
        elif isinstance(result, Task):
            items = [result]
        elif result is None:
            raise PipelineValidationError(f"{where} returned None; return the list of its tasks")
        elif isinstance(result, Iterable) and not isinstance(result, (str, bytes, Mapping)):
            items = list(result)
        else:
            raise PipelineValidationError(f"{where} returned {result!r}; return the list of its tasks")
        for position, item in enumerate(items):
            if not isinstance(item, Task):
                raise PipelineValidationError(
                    f"{where} returned {item!r} ({type(item).__name__}) at position {position}; "
                    "every item must be a Task (decorate functions with @task)"
                )
        made = Pipeline(name, description=description)
        made.add_tasks(items)
        made.validate()
        made.builder = build
        marks = governance_of(build)  # @comply_with_gdpr and friends under @pipeline
        if marks is not None:
            setattr(made, GOVERNANCE_ATTR, marks)
        return made

    return decorate
