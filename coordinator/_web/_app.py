"""The dashboard's aiohttp server, in the coordinator's own event loop.

It only reads: every handler asks the same state and store the gRPC servicers ask, and
nothing here runs per task unless a client watches a run (see ``_sse``). Auth mirrors the
gRPC guard: the same credential parsing, principal and permission per endpoint, with the
``xpipe_token`` cookie of ``POST /api/login`` standing in for the header that an
``EventSource`` cannot send.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from xpipe.security._auth import authorization_value
from xpipe.security._errors import AuthUnavailableError
from xpipe.security._rbac import authorize

from .._authn import Unauthenticated, _cert_principal, principal_from_authorization
from .._caller import CALLER, LOCAL

if TYPE_CHECKING:
    from .._server import Coordinator

__all__ = ["WebServer", "WORKER_SAMPLES"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: Heartbeat samples kept per worker for the workers page's sparklines.
WORKER_SAMPLES = 120
#: The cookie ``POST /api/login`` sets; read when no ``Authorization`` header came. It holds
#: an opaque session id, never the credential (an LDAP password must not sit in a browser).
TOKEN_COOKIE = "xpipe_token"
#: How long a login lasts, and how many logins are kept (the oldest is dropped past it).
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 10_000
#: Keys of the aiohttp app.
COORDINATOR = web.AppKey("coordinator", object)
SERVER = web.AppKey("server", object)


def json_error(status: int, message: str, **extra) -> web.Response:
    """A JSON error answer: ``{"error", "status", ...}`` (see docs/api.md)."""
    return web.json_response({"error": message, "status": status, **extra}, status=status)


class WebServer:
    """Serves the pages and ``/api/`` on ``listen`` (``HOST:PORT``; port 0 picks one).

    Args:
        coordinator: Whose state is shown.
        listen: Where to bind.
        tls_cert, tls_key: PEM files: serve HTTPS with the gRPC server's certificate.
        tls_ca: With ``client_certs``: the CA client certificates must chain to.
        client_certs: ``--tls-client-auth require``: a client certificate from ``tls_ca`` is
            an identity, as on gRPC. Optional here (a browser may log in with a token instead).
    """

    def __init__(
        self, coordinator: Coordinator, listen: str, *, tls_cert: str = "", tls_key: str = "", tls_ca: str = "",
        client_certs: bool = False,
    ):  # fmt: skip
        self.c = coordinator
        self.listen = listen
        self._ssl: ssl.SSLContext | None = None
        if tls_cert:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(tls_cert, tls_key)
            if client_certs and tls_ca:
                self._ssl.load_verify_locations(tls_ca)
                self._ssl.verify_mode = ssl.CERT_OPTIONAL
        self.url = ""
        #: worker_id -> (last_seen, deque of (at, cpu_percent, memory_used_bytes)).
        self.samples: dict[str, tuple[float, deque]] = {}
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task | None = None
        #: Open event streams; each ends when the server stops.
        self.streams: set[asyncio.Task] = set()
        #: Logins: session id -> (credential, expires at). In memory only: a restarted or new
        #: leader coordinator asks its viewers to log in again.
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def open_session(self, credential: str) -> str:
        """A new session id standing for ``credential`` (checked by the caller) until it expires.

        The credential is checked again on every call, as a header would be, so revoking a
        token or disabling an LDAP account ends its sessions at once.
        """
        now = time.monotonic()
        while self._sessions:  # expired ones first, then the oldest past the cap
            oldest, (_, expires) = next(iter(self._sessions.items()))
            if expires > now and len(self._sessions) < MAX_SESSIONS:
                break
            del self._sessions[oldest]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (credential, now + SESSION_TTL_S)
        return session

    def session_credential(self, session: str) -> str | None:
        """The credential behind a live session id, or None (unknown, expired, logged out)."""
        entry = self._sessions.get(session)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._sessions[session]
            return None
        return entry[0]

    def close_session(self, session: str) -> None:
        self._sessions.pop(session, None)

    def build_app(self) -> web.Application:
        from . import _api, _sse

        app = web.Application(middlewares=[self._errors, self._auth])
        app[COORDINATOR] = self.c
        app[SERVER] = self
        _api.add_routes(app)
        _sse.add_routes(app)
        app.router.add_get("/", self._index)
        if STATIC_DIR.is_dir():
            app.router.add_static("/static/", STATIC_DIR)
        return app

    async def start(self) -> str:
        """Bind and serve; returns the URL. Raises OSError (naming the address) if it cannot bind."""
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            port_number = int(port)
        except ValueError:
            raise OSError(f"--http-listen {self.listen!r}: the port is not a number") from None
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port_number, ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(exc.errno, f"cannot serve the dashboard on {self.listen}: {exc.strerror or exc}") from None
        bound = site._server.sockets[0].getsockname()[1]  # port 0: the one the kernel picked
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if self._ssl else 'http'}://{shown}:{bound}/"
        self.c.dashboard_url = self.url
        self._sampler = asyncio.create_task(self._sample_workers(), name="xpipe-web-sampler")
        log.info("dashboard on %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Close event streams, then the server (idempotent)."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None
        for task in list(self.streams):
            task.cancel()
        if self.streams:
            await asyncio.gather(*self.streams, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ worker samples

    async def _sample_workers(self) -> None:
        """Record each worker's CPU and memory once per heartbeat it sent (O(workers) a second)."""
        interval_s = max(0.1, self.c.config.heartbeat_interval_s)
        while True:
            try:
                self.sample_once()
            except Exception:  # a bug here must not end the sampler silently
                log.exception("sampling worker heartbeats")
            await asyncio.sleep(interval_s)

    def sample_once(self) -> None:
        workers = self.c.engine.state.workers
        for worker_id, w in workers.items():
            if w.metrics is None:
                continue
            seen = self.samples.get(worker_id)
            if seen is None:
                seen = self.samples[worker_id] = (0.0, deque(maxlen=WORKER_SAMPLES))
            if w.last_seen == seen[0]:
                continue  # no heartbeat since the last sample
            seen[1].append((w.last_seen, w.metrics.cpu_percent, w.metrics.memory_used_bytes))
            self.samples[worker_id] = (w.last_seen, seen[1])
        for worker_id in [k for k in self.samples if k not in workers]:
            del self.samples[worker_id]

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        """Unknown paths under /api/ answer JSON; a bug answers 500 JSON and is logged."""
        try:
            return await handler(request)
        except web.HTTPNotFound as exc:
            if request.path.startswith("/api/") and exc.content_type != "application/json":  # no such route
                return json_error(404, f"no endpoint {request.path}")
            raise
        except web.HTTPMethodNotAllowed as exc:
            if request.path.startswith("/api/"):
                return json_error(405, f"{request.method} is not allowed on {request.path} (use {', '.join(sorted(exc.allowed_methods))})")
            raise
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("dashboard %s %s", request.method, request.path)
            return json_error(500, "internal error; see the coordinator's log")

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        """Leader gate, then who calls and whether they hold the route's permission."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        election = self.c.election
        if election is not None and not election.is_leader:
            leader, _, _ = await self.c.cluster_view()
            return json_error(503, f"this coordinator is not the leader (leader: {leader or 'unknown'}); "
                                   "open the leader's dashboard", leader_address=leader,
                              leader_dashboard_url=await election.dashboard_url_of(leader))  # fmt: skip
        permission = getattr(request.match_info.route.handler, "permission", None)
        auth = self.c.guard.auth
        if auth is None or permission is None:  # auth off: every caller is the admin 'local'
            CALLER.set(LOCAL if auth is None else None)
            return await handler(request)
        header = request.headers.get("Authorization") or ""
        if not header:
            session = request.cookies.get(TOKEN_COOKIE, "")
            # An unknown session (expired, logged out, another coordinator's) counts as none.
            credential = self.session_credential(session) if session else None
            header = authorization_value(credential) if credential else ""  # Bearer, or Basic for user:password
        try:
            principal = await self.principal_of(header) if header else self._cert_principal(request)
        except PermissionError as exc:
            return json_error(401, f"{exc}; {permission} is needed", permission=permission)
        except AuthUnavailableError as exc:
            return json_error(503, f"cannot check credentials now: {exc}")
        namespace = None
        run_id = request.match_info.get("run_id")
        if run_id is not None:
            namespace = await auth.run_namespace(run_id)
        refusal = authorize(principal, permission, namespace, self.c.policy)
        if refusal is not None:
            status = 401 if refusal.code == "UNAUTHENTICATED" else 403
            return json_error(status, refusal.message, permission=permission)
        CALLER.set(principal)
        return await handler(request)

    def _cert_principal(self, request: web.Request):
        """The identity in a verified client certificate (mTLS), or None."""
        security = self.c.security
        if security is None or not security.client_certs or request.transport is None:
            return None
        tls = request.transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        return _cert_principal(der) if der else None

    async def principal_of(self, header: str):
        """The principal of an ``Authorization`` value. Raises PermissionError when it is not valid."""
        security = self.c.security
        if security is None or security.authenticator is None:
            raise PermissionError("this coordinator takes no tokens (client certificates only)")
        try:
            return await principal_from_authorization(security, header)
        except Unauthenticated as exc:
            raise PermissionError(str(exc).replace("authorization metadata", "credential")) from None

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return web.FileResponse(index)
        return web.Response(text="<!doctype html><title>xpipe</title><p>xpipe dashboard: see /api/runs</p>",
                            content_type="text/html")  # fmt: skip

