"""Who is making the current call: set once per call by the auth check, read by handlers.

gRPC's asyncio server runs each call in its own task, so a context variable set where
the call is authenticated (see ``_guard``) is seen by that call's handler and by nothing
else. Handlers that need the caller (submit: who owns the run and which code it may send;
the audit log: who did it) read :func:`caller`.

A coordinator started without ``--auth`` and without client certificates has no notion of
identity: every caller is :data:`LOCAL`, which holds ``admin``. That is the embedded
default's zero-config mode, allowed only on loopback unless ``--insecure`` is given.
"""

from __future__ import annotations

from contextvars import ContextVar

from xpipe.security._principal import Principal

__all__ = ["CALLER", "LOCAL", "caller"]

#: The caller when the coordinator checks no identity (no ``--auth``, no client certificates).
LOCAL = Principal(name="local", roles=frozenset({"admin"}), source="none")

#: The current call's principal; unset outside a call (and when auth is off): :data:`LOCAL`.
CALLER: ContextVar[Principal] = ContextVar("xpipe_caller", default=LOCAL)


def caller() -> Principal:
    """The principal of the call being handled (:data:`LOCAL` when auth is off)."""
    return CALLER.get()
