"""Task error policies (``@handle_errors``) and run-wide fault tolerance.

A policy only decides what an exception *means*; the worker applies it where the task
runs (``xpipe.worker._runtask``) and the coordinator's state machine turns the outcome
into a state:

* an exception in ``skip_on`` ends the task SKIPPED; its dependents still run and get
  ``None`` for that input (a ``DataFlow`` with a key from it gets ``None`` too);
* an exception not in ``retry_on`` (when ``retry_on`` is given) is not retried;
* when no retry follows (not retryable, or the last allowed attempt), ``fallback`` is
  called with the task's own arguments and its return value becomes the task's result;
  the run records that the fallback was used (``TaskRunInfo.fallback_used``).

The retry schedule (:func:`backoff_delay_s`) and the recovery decisions are leaf facts the
coordinator shares: they live in :mod:`xpipe._retry` and :mod:`xpipe._domain` and are
re-exported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ._domain import RECOVERY_DECISIONS
from ._proto import common_pb2
from ._retry import BACKOFF_STRATEGIES, backoff_delay_s, duration_option, parse_duration_s

__all__ = [
    "ErrorPolicy",
    "FaultTolerance",
    "handle_errors",
    "error_policy_of",
    "backoff_delay_s",
    "parse_duration_s",
    "BACKOFF_STRATEGIES",
    "POLICY_ATTR",
    "RECOVERY_DECISIONS",
    "check_recovery_handler",
]

#: Where ``@handle_errors`` puts its policy on the function.
POLICY_ATTR = "__xpipe_error_policy__"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ErrorPolicy:
    """What to do when a task's function raises."""

    retry_on: tuple[type[BaseException], ...] | None
    """Only these exception types are retried; None: every exception is."""
    skip_on: tuple[type[BaseException], ...] = ()
    """These end the task SKIPPED instead of FAILED; dependents get None for its result."""
    fallback: Callable[..., Any] | None = None
    """Called with the task's arguments when no retry follows; its return value is the result."""

    def skips(self, exc: BaseException) -> bool:
        return bool(self.skip_on) and isinstance(exc, self.skip_on)

    def retryable(self, exc: BaseException) -> bool:
        return self.retry_on is None or isinstance(exc, self.retry_on)


def _exception_types(name: str, value: Any) -> tuple[type[BaseException], ...]:
    if isinstance(value, type):
        value = [value]
    try:
        types = tuple(value)
    except TypeError:
        raise TypeError(
            f"handle_errors({name}=...) must be a list of exception classes, got {value!r}"
        ) from None
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"handle_errors({name}=...) must hold exception classes, got {item!r}")
    return types


def handle_errors(
    *,
    retry_on: Iterable[type[BaseException]] | None = None,
    skip_on: Iterable[type[BaseException]] = (),
    fallback: Callable[..., Any] | None = None,
) -> Callable[[F], F]:
    """Decorator: attach an error policy to a task function (see the module docstring).

    The function itself is returned unchanged, so calling it locally behaves as before;
    the policy takes effect when the function runs as a task on a worker. It may be
    applied above or below ``@task``::

        @task(max_retries=3, retry_backoff="exponential")
        @handle_errors(retry_on=[ConnectionError], skip_on=[DataValidationError], fallback=use_cached_data)
        def fetch(url): ...

    Raises:
        TypeError: an argument is not a list of exception classes, or fallback is not
            callable, or the decorated object is not a function or function Task.
    """
    retry_types = None if retry_on is None else _exception_types("retry_on", retry_on)
    skip_types = _exception_types("skip_on", skip_on)
    if fallback is not None and not callable(fallback):
        raise TypeError(f"handle_errors(fallback=...) must be callable, got {fallback!r}")
    policy = ErrorPolicy(retry_types, skip_types, fallback)

    def decorate(func: F) -> F:
        from ._dag import Task  # a Task made by @task: put the policy on the function it runs

        target: Any = func.func if isinstance(func, Task) else func
        if target is None or not callable(target):
            raise TypeError(f"@handle_errors must decorate a function, got {func!r}")
        try:
            setattr(target, POLICY_ATTR, policy)
        except AttributeError:
            raise TypeError(
                f"@handle_errors cannot attach a policy to {target!r}; decorate a plain function"
            ) from None
        return func

    return decorate


def check_recovery_handler(func: Any, *, where: str) -> Callable[..., Any]:
    """Return ``func`` if it can be called as ``handler(failed_task, error, context)``.

    Raises:
        TypeError: not callable, or its signature does not take three positional arguments.
    """
    if not callable(func) or isinstance(func, type):
        raise TypeError(f"{where}: a recovery handler must be a function, got {func!r}")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin without a signature: let the worker find out
        return func
    try:
        signature.bind("task", {}, {})
    except TypeError as exc:
        raise TypeError(
            f"{where}: recovery handler {getattr(func, '__qualname__', func)!s}{signature} must accept "
            f"(failed_task, error, context): {exc}"
        ) from None
    return func


def error_policy_of(func: Any) -> ErrorPolicy | None:
    """The policy ``@handle_errors`` attached to ``func``, if any (bound methods included)."""
    policy = getattr(func, POLICY_ATTR, None)
    return policy if isinstance(policy, ErrorPolicy) else None


@dataclass(frozen=True, slots=True)
class FaultTolerance:
    """Run-wide fault-tolerance settings (``Pipeline.configure_fault_tolerance``)."""

    checkpoint_interval_s: float = 0.0
    """How often a run's progress should be checkpointed; 0: not configured. Carried in the spec.

    Like every ``_s`` field here: seconds as a number or timedelta; a string is refused
    (duration strings go through :meth:`build`'s names without ``_s``)."""
    max_retries_per_task: int = 0
    """``max_retries`` of every task that sets none of its own."""
    retry_backoff_strategy: str = "fixed"
    """``retry_backoff`` of every task that sets none: "fixed", "linear" or "exponential"."""
    failure_isolation: bool = True
    """True: independent branches run on after a failure. False: the first failure cancels the rest."""
    circuit_breaker_enabled: bool = False
    """True: attempts go through circuit breakers (see ``xpipe.coordinator._breaker``)."""
    circuit_failure_threshold: int = 5
    """Failed attempts within ``circuit_window_s`` that open a circuit."""
    circuit_window_s: float = 60.0
    """How far back failures count toward opening a circuit."""
    circuit_open_s: float = 30.0
    """How long an open circuit fails attempts fast before it lets one probe through."""

    def __post_init__(self) -> None:
        """Check every field (raises ValueError naming it), so a FaultTolerance is always valid."""
        n = self.max_retries_per_task
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**32:
            raise ValueError(f"max_retries_per_task must be an int >= 0, got {n!r}")
        if self.retry_backoff_strategy not in BACKOFF_STRATEGIES:
            raise ValueError(
                f"retry_backoff_strategy must be one of {sorted(BACKOFF_STRATEGIES)}, "
                f"got {self.retry_backoff_strategy!r}"
            )
        for name in ("failure_isolation", "circuit_breaker_enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        k = self.circuit_failure_threshold
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < 2**32:
            raise ValueError(f"circuit_failure_threshold must be an int >= 1, got {k!r}")
        for name in ("checkpoint_interval_s", "circuit_window_s", "circuit_open_s"):
            seconds = duration_option(name, getattr(self, name), None)
            if seconds == 0 and name != "checkpoint_interval_s":
                raise ValueError(f"{name} must be more than 0 seconds, got {getattr(self, name)!r}")
            object.__setattr__(self, name, seconds)

    @classmethod
    def build(
        cls,
        *,
        checkpoint_interval: str | float | timedelta | None = None,
        checkpoint_interval_s: float | timedelta | None = None,
        circuit_window: str | float | timedelta | None = None,
        circuit_window_s: float | timedelta | None = None,
        circuit_open: str | float | timedelta | None = None,
        circuit_open_s: float | timedelta | None = None,
        **others: Any,
    ) -> FaultTolerance:
        """The settings from user arguments: each duration as ``<name>_s`` (seconds) or
        ``<name>`` (also strings like "1min"); None: the default.

        Raises:
            ValueError: an argument is invalid, or a duration is given both ways; the
                message names it.
        """
        pairs = {
            "checkpoint_interval_s": (checkpoint_interval_s, checkpoint_interval),
            "circuit_window_s": (circuit_window_s, circuit_window),
            "circuit_open_s": (circuit_open_s, circuit_open),
        }
        durations = {}
        for name_s, (seconds, duration) in pairs.items():
            value = duration_option(name_s, seconds, duration)
            if value is not None:
                durations[name_s] = value
        return cls(**durations, **others)

    def to_proto(self) -> common_pb2.FaultTolerance:
        return common_pb2.FaultTolerance(
            checkpoint_interval_s=self.checkpoint_interval_s,
            max_retries_per_task=self.max_retries_per_task,
            retry_backoff=BACKOFF_STRATEGIES[self.retry_backoff_strategy],
            fail_fast=not self.failure_isolation,
            circuit_breaker_enabled=self.circuit_breaker_enabled,
            circuit_failure_threshold=self.circuit_failure_threshold,
            circuit_window_s=self.circuit_window_s,
            circuit_open_s=self.circuit_open_s,
        )
