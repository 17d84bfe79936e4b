"""The xpipe coordinator: gRPC services, the run/task state machine, stores.

The public names are imported on first use (PEP 562), so that importing the pure state
machine (``xpipe.coordinator._state``) loads neither grpc, asyncio nor sqlite3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import EngineConfig
    from ._server import Coordinator
    from ._store import SQLiteStore, Store

__all__ = ["Coordinator", "EngineConfig", "Store", "SQLiteStore"]

_LAZY = {"Coordinator": "._server", "EngineConfig": "._engine", "Store": "._store", "SQLiteStore": "._store"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
