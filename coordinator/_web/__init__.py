"""The coordinator's web dashboard: pages under ``static/`` and the JSON API of docs/api.md.

Started by ``xpipe-coordinator --http-listen HOST:PORT`` in the coordinator's event loop.
"""

from ._app import WebServer

__all__ = ["WebServer"]
