"""The ``xpipe-worker`` daemon, for embedding it in a program of your own.

Names load on first use (PEP 562): an executor child imports ``xpipe.worker._runtask``
through this package and must not pay for the daemon, gRPC or psutil.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpipe._lazy import lazy_exports

if TYPE_CHECKING:
    from ._daemon import WorkerConfig, WorkerDaemon

__all__ = ["WorkerConfig", "WorkerDaemon"]

_LAZY = {"WorkerConfig": "._daemon", "WorkerDaemon": "._daemon"}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
