"""The xpipe coordinator: gRPC services, the run/task state machine, stores."""

from ._engine import EngineConfig
from ._server import Coordinator
from ._store import SQLiteStore, Store

__all__ = ["Coordinator", "EngineConfig", "Store", "SQLiteStore"]
