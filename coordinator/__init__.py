"""The xpipe coordinator: gRPC services, the run/task state machine, stores.

The public names are imported on first use (PEP 562), so that importing the pure state
machine (``xpipe.coordinator._state``) loads neither grpc, asyncio nor sqlite3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpipe._lazy import lazy_exports

if TYPE_CHECKING:
    from ._engine import EngineConfig
    from ._server import Coordinator
    from ._store import SQLiteStore, Store

__all__ = ["Coordinator", "EngineConfig", "Store", "SQLiteStore"]

_LAZY = {"Coordinator": "._server", "EngineConfig": "._engine", "Store": "._store", "SQLiteStore": "._store"}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
