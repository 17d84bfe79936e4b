"""Where a daemon serves its metrics: the ``--metrics-listen`` value and its errors.

Apart from :mod:`._export` so that reading the flag loads no OpenTelemetry: with
metrics off a daemon never imports it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._export import MetricsEndpoint

__all__ = [
    "METRICS_LISTEN_ENV", "METRICS_PATH", "MetricsListenError", "metrics_listen_default", "parse_listen",
    "serve_metrics_flag",
]  # fmt: skip

#: The one path served; every other path is 404.
METRICS_PATH = "/metrics"
#: Environment variable read when ``--metrics-listen`` is not given.
METRICS_LISTEN_ENV = "XPIPE_METRICS_LISTEN"


class MetricsListenError(OSError):
    """``--metrics-listen`` names an address that cannot be served (malformed, or in use)."""


def metrics_listen_default() -> str:
    """``$XPIPE_METRICS_LISTEN`` or "" (metrics off): the default of ``--metrics-listen``."""
    return os.environ.get(METRICS_LISTEN_ENV, "").strip()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises :class:`MetricsListenError` naming the value."""
    host, sep, port_text = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsListenError(f"--metrics-listen {listen!r}: expected HOST:PORT with a port from 0 to 65535")
    return host, int(port_text)


def serve_metrics_flag(listen: str, program: str) -> MetricsEndpoint | None:
    """Serve the metrics ``--metrics-listen`` asks for; None when it is empty (metrics off).

    For a daemon's start-up, before its event loop: an address that cannot be served ends
    the program with status 2 and one line naming it, not a traceback.
    """
    if not listen:
        return None
    from ._export import start_metrics  # OpenTelemetry loads only when asked

    try:
        return start_metrics(listen, service=program)
    except MetricsListenError as exc:
        print(f"{program}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
