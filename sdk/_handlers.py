"""Named handlers: the polyglot way to run Python code on a worker.

A client in any language can ask for a task by handler name. A worker serves the names
registered by the modules it was told to import (``xpipe-worker --import mypkg.handlers``)::

    @xpipe.handler("resize")
    def resize(image: bytes, width: int) -> bytes: ...

The registry is per process; the worker advertises :func:`handler_names` when it registers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import HandlerNotFoundError

__all__ = ["handler", "get_handler", "handler_names", "HandlerNotFoundError"]

F = TypeVar("F", bound=Callable[..., Any])

_registry: dict[str, Callable[..., Any]] = {}


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # Re-importing or reloading a module makes a new function object for the same
    # definition; that is a refresh, not a clash.
    if a is b:
        return True
    key_a = (getattr(a, "__module__", None), getattr(a, "__qualname__", None))
    key_b = (getattr(b, "__module__", None), getattr(b, "__qualname__", None))
    return None not in key_a and key_a == key_b


def _register(name: str, func: Callable[..., Any]) -> None:
    if not callable(func):
        raise TypeError(f"handler {name!r} must decorate a callable, got {type(func).__name__}")
    existing = _registry.get(name)
    if existing is not None and not _same_function(existing, func):
        raise ValueError(
            f"handler name {name!r} is already registered to "
            f"{existing.__module__}.{getattr(existing, '__qualname__', existing)!s}; "
            "choose another name"
        )
    _registry[name] = func


def handler(name: str | Callable[..., Any]) -> Any:
    """Register a function as the handler called ``name``.

    ``@handler("resize")`` registers under "resize"; bare ``@handler`` uses the function's
    ``__name__``. The function is returned unchanged.

    Raises:
        ValueError: the name is empty, or already registered to a different function.
    """
    if callable(name) and not isinstance(name, str):
        func = name
        _register(func.__name__, func)
        return func
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"handler name must be a non-empty string, got {name!r}")

    def decorate(func: F) -> F:
        _register(name, func)
        return func

    return decorate


def get_handler(name: str) -> Callable[..., Any]:
    """The function registered as ``name``.

    Raises:
        HandlerNotFoundError: (a KeyError) nothing is registered under that name.
    """
    try:
        return _registry[name]
    except KeyError:
        known = handler_names()
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise HandlerNotFoundError(
            f"no handler named {name!r} in this process (registered: {shown or 'none'}); "
            "import the module that defines it"
        ) from None


def handler_names() -> list[str]:
    """Names of every registered handler, sorted."""
    return sorted(_registry)
