"""Package attributes imported on first use (PEP 562), for every ``__init__`` of ours.

A leaf module: it imports nothing of ours. ``xpipe``, ``xpipe.coordinator`` and
``xpipe.worker`` name their public objects here instead of importing them, so that a pure
core (the state machine, an executor child's task runner) can import its package without
loading grpc, asyncio or sqlite3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], where: Mapping[str, str], *, renamed: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for attributes that load on first use.

    Args:
        package: the package's ``__name__`` (relative module names resolve against it).
        namespace: the package's ``globals()``; a loaded attribute is stored there, so later
            lookups never reach ``__getattr__`` again.
        where: public name -> the (relative) module that defines it.
        renamed: public name -> the name it has in that module, where they differ.
    """
    renamed = renamed or {}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), renamed.get(name, name))
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__
