"""The ``xpipe-worker`` daemon, for embedding it in a program of your own.

Names load on first use (PEP 562): an executor child imports ``xpipe.worker._runtask``
through this package and must not pay for the daemon, gRPC or psutil.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._daemon import WorkerConfig, WorkerDaemon

__all__ = ["WorkerConfig", "WorkerDaemon"]

_LAZY = {"WorkerConfig": "._daemon", "WorkerDaemon": "._daemon"}


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
