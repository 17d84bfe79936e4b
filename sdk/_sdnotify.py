"""systemd's service notification protocol (``sd_notify``), for ``Type=notify`` units.

Written by hand because the protocol is one datagram of ``KEY=VALUE`` lines to the unix
socket named by ``$NOTIFY_SOCKET`` (abstract when it starts with ``@``): the ``sdnotify``
package (last release 2017) does the same in as many lines, and ``systemd-python`` or
``cysystemd`` need libsystemd headers to build. Without ``$NOTIFY_SOCKET`` (not under
systemd, or not ``Type=notify``) every call does nothing.

A daemon's ``main()`` calls :func:`init_from_environ` once; it takes ``NOTIFY_SOCKET`` and
``WATCHDOG_*`` out of the environment, so task processes and other children never write
to systemd's socket for it. Everything else reports through :func:`notifier`. Sends never
block and never raise: a lost status line must not stop a coordinator or a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping

__all__ = ["NOTIFY_ENV", "Notifier", "init_from_environ", "notifier"]

log = logging.getLogger(__name__)

#: The variables systemd gives the one process it supervises (taken out of children's environment).
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notifications to one systemd socket (or nowhere, when ``address`` is empty).

    Args:
        address: ``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket.
        watchdog_usec: ``$WATCHDOG_USEC`` for this process (0: no watchdog); systemd
            restarts the unit when no ``WATCHDOG=1`` arrives within it.
    """

    def __init__(self, address: str = "", *, watchdog_usec: int = 0) -> None:
        if address and address[0] not in "/@":
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying systemd", address)
            address = ""
        self.address = "\0" + address[1:] if address.startswith("@") else address
        #: How often :meth:`watchdog` pings: half the deadline, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval_s = watchdog_usec / 2e6 if address and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when running under systemd with ``Type=notify``."""
        return bool(self.address)

    def send(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True if it left (False when disabled or lost)."""
        if not self.address:
            return False
        # A newline would start a new field: a status text is one line.
        payload = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # a stuck systemd must not stall the event loop
            self._sock.sendto(payload.encode(), self.address)
        except OSError as exc:
            # Logged once loudly: a watchdog that cannot ping gets the unit restarted.
            (log.debug if self._warned else log.warning)("cannot notify systemd at %r: %s", self.address, exc)
            self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1``: the unit's start has finished (``systemctl start`` returns)."""
        return self.send(READY="1", STATUS=status)

    def stopping(self, status: str) -> bool:
        """``STOPPING=1``: a shutdown has begun; systemd waits up to ``TimeoutStopSec``."""
        return self.send(STOPPING="1", STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=``: the line ``systemctl status`` shows."""
        return self.send(STATUS=text)

    async def watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` from the event loop until cancelled (returns at once without a watchdog).

        Run it as a task of the daemon's loop: a loop blocked for longer than the
        deadline stops the pings, and systemd restarts the unit.
        """
        if self.watchdog_interval_s is None:
            return
        while True:
            self.send(WATCHDOG="1")
            await asyncio.sleep(self.watchdog_interval_s)

    def close(self) -> None:
        """Close the socket (idempotent); a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_process = Notifier()


def init_from_environ(environ: MutableMapping[str, str] | None = None) -> Notifier:
    """Read this process's notifier from (and remove it from) the environment; see the module docs.

    The watchdog applies only when ``$WATCHDOG_PID`` is unset or names this process.
    """
    global _process
    env = os.environ if environ is None else environ
    address, usec_text, pid_text = (env.pop(name, "") for name in NOTIFY_ENV)
    try:
        usec = int(usec_text or 0)
        if pid_text and int(pid_text) != os.getpid():
            usec = 0
    except ValueError:
        log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r are not integers: no watchdog pings", usec_text, pid_text)
        usec = 0
    _process.close()
    _process = Notifier(address, watchdog_usec=usec)
    return _process


def notifier() -> Notifier:
    """This process's notifier (disabled until :func:`init_from_environ`)."""
    return _process
