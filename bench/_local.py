"""Helpers the benches share for processes on this one machine: a free loopback port, and
running a process where it competes least with the system measured.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

__all__ = ["free_port", "nice_session", "sched_idle"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sched_idle() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: the child, and every process it forks, runs
    under ``SCHED_IDLE``, only on a core that nothing else wants."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def nice_session(pid: int) -> None:
    """Give the scheduling group of ``pid``'s session (Linux autogroup; started with
    ``start_new_session=True``) nice 19; nothing happens where autogroup is not available."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text("19")
