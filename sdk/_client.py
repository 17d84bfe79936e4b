"""A synchronous gRPC client for the coordinator's public services.

It takes a list of coordinator addresses and moves to the next one when a call finds a
coordinator unavailable, waiting between attempts by :class:`~xpipe._backoff.Backoff`, so
a client blocked in :meth:`Client.watch` rides through a coordinator restart or an HA
failover without spinning. After ``connect_timeout_s`` with no coordinator answering it
raises :class:`CoordinatorUnavailableError` naming the addresses (None: keep trying). A
watch that was streaming and broke gets a fresh ``connect_timeout_s``. Submits carry an
idempotency key, so a retried submit never starts a run twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ._artifact_fetch import ACCEPT_COMPRESSION, INLINE_MAX_BYTES, fetch_artifacts
from ._backoff import REFUSED_GRACE_S, Backoff, connect_timeout_setting
from ._domain import REJECTED_GRAPH, REJECTION_KIND_KEY, TERMINAL_RUN_STATES
from ._install import requirements_problem, timeout_problem
from ._limits import CLIENT_KEEPALIVE_OPTIONS, DEFAULT_INSTALL_TIMEOUT_S, MAX_MESSAGE_BYTES
from ._proto import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2, pipeline_pb2, pipeline_pb2_grpc
from ._types import (
    TASK_STATES,
    ClusterStatus,
    InstallReport,
    LogChunk,
    NodeRecovery,
    RunEvent,
    RunInfo,
    RunSummary,
    TaskResult,
    WorkerInfo,
)
from .errors import (
    AuthenticationError,
    CoordinatorUnavailableError,
    DistributedExecutionError,
    PermissionDeniedError,
    PipelineValidationError,
    RequestRejectedError,
    RunNotFoundError,
    XpipeError,
)
from .security._auth import AUTHORIZATION_KEY, authorization_value
from .security._principal import check_name
from .security._tls import TLSConfig, client_token, speaks_tls, tls_refusal
from .telemetry._tracing import end_run_span, follow_run_span, setup_tracing, start_run_span

if TYPE_CHECKING:
    from ._lineage import AuditPage, LineageGraph
    from ._dag import Pipeline

__all__ = ["Client", "from_grpc_error", "leader_hint", "parse_addresses", "translate_rpc_errors"]

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")

_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
    # Pings bound every stream (WatchRun has no deadline unless the caller gives timeout_s),
    # so a frozen or partitioned coordinator breaks a watch in seconds; it then reconnects.
    *CLIENT_KEEPALIVE_OPTIONS,
    # WatchRun's events are read on the caller's thread instead of being handed over from
    # gRPC's channel-spin thread: about 0.35 ms less per call (see docs/performance.md).
    # Its one restriction, code()/details() only once the call ended, fits our use: they
    # are read from the RpcError an iteration raised.
    ("SingleThreadedUnaryStream", 1),
]
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
#: A watch stream also ends CANCELLED when its coordinator shuts down: reconnect then too.
_STREAM_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
#: What a watch with its own deadline handles itself: also that deadline passing.
_STREAM_KEPT = _STREAM_RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}
#: Trailing metadata in which an HA follower names the leader (see coordinator/_leader.py).
_LEADER_KEY = "xpipe-leader"
#: Jumps in a row to a leader named by a follower, with no wait: members may disagree for a
#: moment during an election, and must not bounce a client between them for ever.
_MAX_HINT_JUMPS = 3
#: Waits between attempts: short at first (a failover is quick), a few attempts a second
#: at most once a coordinator stays away.
_RECONNECT_INITIAL_S = 0.05
_RECONNECT_MAX_S = 2.0
#: What gRPC's details say when nothing listens at the address (the TCP connect was refused).
_REFUSED = "Connection refused"


_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
_REJECTED = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.ABORTED,
}


def from_grpc_error(exc: grpc.RpcError) -> XpipeError:
    """Translate a gRPC error into the xpipe error a caller can act on.

    Every status code maps somewhere; ``tests/unit/test_errors.py`` checks that. An
    ``INVALID_ARGUMENT`` is a :class:`PipelineValidationError` only when the coordinator marked
    it a graph problem (trailing metadata ``REJECTION_KIND_KEY``); a bad field, a value over a
    limit or an unmarked one is a :class:`RequestRejectedError`.
    """
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return RunNotFoundError(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if _metadata_value(exc, REJECTION_KIND_KEY) == REJECTED_GRAPH:
            return PipelineValidationError(details)
        return RequestRejectedError(f"{code.name}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{code.name}: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(f"{code.name}: {details}")
    if code in _UNAVAILABLE:
        return CoordinatorUnavailableError(f"coordinator unavailable ({code.name}): {details}")
    if code in _REJECTED:
        return RequestRejectedError(f"{code.name}: {details}")
    # OK should never arrive as an error; UNKNOWN, INTERNAL, DATA_LOSS are server faults.
    return DistributedExecutionError(f"coordinator error ({code.name}): {details}")


class translate_rpc_errors:  # noqa: N801 - used like a function: ``with translate_rpc_errors():``
    """Context manager: a gRPC error escaping the block leaves it as the xpipe error it means.

    The single place the client turns status codes into our exceptions (``raise ... from``
    the gRPC error, so its details stay in the traceback). A class, not a generator, since
    every call goes through it.

    Args:
        keep: status codes the caller handles itself (reconnect, its own deadline): errors
            with these codes leave the block untranslated.
    """

    __slots__ = ("keep",)

    def __init__(self, keep: frozenset[grpc.StatusCode] | set[grpc.StatusCode] = frozenset()):
        self.keep = keep

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, grpc.RpcError):
            return False
        code = exc.code() if hasattr(exc, "code") else None
        if code in self.keep:
            return False
        raise from_grpc_error(exc) from exc


def parse_addresses(coordinator: str | Sequence[str]) -> list[str]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` -> a list of ``host:port`` strings."""
    items = coordinator.split(",") if isinstance(coordinator, str) else list(coordinator)
    out = [a.strip() for a in items if a and a.strip()]
    if not out:
        raise ValueError("no coordinator address given")
    for address in out:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bad coordinator address {address!r}: expected HOST:PORT")
    return out


def _metadata_value(exc: grpc.RpcError, key: str) -> str:
    """The value of ``key`` in the error's trailing metadata, or "" (absent, or no call metadata)."""
    try:
        metadata = exc.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - an error without call metadata carries none
        return ""
    for k, value in metadata:
        if k == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def leader_hint(exc: grpc.RpcError) -> str:
    """The leader a follower named in its UNAVAILABLE answer, or "" (none, or malformed)."""
    try:
        metadata = exc.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - an error without call metadata carries no hint
        return ""
    for key, value in metadata:
        if key == _LEADER_KEY:
            hint = value.decode() if isinstance(value, bytes) else str(value)
            try:
                return parse_addresses(hint)[0] if "," not in hint else ""
            except ValueError:
                return ""
    return ""


def check_seconds(name: str, value: Any, *, allow_none: bool) -> float | None:
    """``value`` as finite seconds >= 0 (or None where that means "no limit").

    Raises:
        ValueError: anything else, naming ``name`` and the value.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        forever = " (None waits for ever)" if allow_none else ""
        raise ValueError(f"{name} must be a finite number of seconds >= 0{forever}, got {value!r}")
    return float(value)


def _spec_of(pipeline: Pipeline, retry_on_failure: bool) -> common_pb2.PipelineSpec:
    """The wire spec of a Pipeline (validated); a spec already built by the SDK passes as is."""
    if isinstance(pipeline, common_pb2.PipelineSpec):
        return pipeline
    to_proto = getattr(pipeline, "to_proto", None)
    if to_proto is None:
        raise TypeError(f"expected a Pipeline, got {type(pipeline).__name__}")
    return to_proto(retry_on_failure=retry_on_failure)


def _as_domain(events: Iterator[pipeline_pb2.RunEvent]) -> Iterator[RunEvent]:
    """The events as :class:`RunEvent` dataclasses; closing this closes the stream."""
    try:
        for event in events:
            yield RunEvent.from_proto(event)
    finally:
        events.close()


def _describe(exc: grpc.RpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


#: What gRPC says when the peer dropped the connection before HTTP/2 began (a TLS server
#: does that to a plaintext client), and when a TLS handshake failed.
_DROPPED = ("Socket closed", "Connection reset")
_HANDSHAKE = ("handshake", "CERTIFICATE_VERIFY_FAILED", "ssl")


def transport_problem(address: str, exc: grpc.RpcError, tls: TLSConfig | None) -> str:
    """Why a connection failure will not heal by retrying (TLS settings), or "".

    Checked on a client's first failure at an address, never on the hot path. A plaintext
    client whose coordinator answers a TLS handshake needs TLS; a TLS client whose
    handshake failed has the wrong CA or a certificate that does not name the address.
    """
    details = exc.details() or ""
    if tls is None:
        if any(s in details for s in _DROPPED) and speaks_tls(address):
            return (f"coordinator {address} speaks TLS and this client connected in plaintext: pass "
                    f"tls=TLSConfig(ca=...) or set XPIPE_TLS_CA (CLI: --tls-ca)")  # fmt: skip
        return ""
    why = details if any(s.lower() in details.lower() for s in _HANDSHAKE) else ""
    if not why and any(s in details for s in _DROPPED):
        why = tls_refusal(address, tls)
    if why:
        return (f"TLS handshake with coordinator {address} failed ({why}): check that the CA (tls.ca, "
                f"XPIPE_TLS_CA) signed its certificate, that the certificate names {address.rpartition(':')[0]}, "
                f"and, under mTLS, that this client's certificate comes from the coordinator's CA")  # fmt: skip
    return ""


class _CallDetails(grpc.ClientCallDetails):
    __slots__ = ("compression", "credentials", "metadata", "method", "timeout", "wait_for_ready")

    def __init__(self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str], ...]):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = (*(base.metadata or ()), *metadata)
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _Authorization(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization`` to every call of a channel (only on clients that have a token).

    Metadata rather than gRPC call credentials: those are allowed on TLS channels only and
    run on a separate thread; a loopback coordinator with ``--auth`` and no TLS is valid.
    """

    def __init__(self, token: str):
        self._metadata = ((AUTHORIZATION_KEY, authorization_value(token)),)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_CallDetails(details, self._metadata), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_CallDetails(details, self._metadata), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(_CallDetails(details, self._metadata), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(_CallDetails(details, self._metadata), requests)


class _Attempts:
    """One operation's attempts to reach a coordinator: its deadlines, backoff and hint jumps.

    ``connect_timeout_s`` runs from the start, and again from each :meth:`answered`, so a
    watch that streamed and then broke gets the whole budget to reconnect. ``until`` is the
    caller's own deadline (``wait(timeout_s=...)``), which no reconnect extends.
    """

    __slots__ = ("backoff", "client", "deadline", "jumps", "refused", "refused_since", "timeout_s", "until", "what")

    def __init__(self, client: Client, *, timeout_s: float | None = None, what: str = ""):
        self.client = client
        self.timeout_s = timeout_s
        self.until = None if timeout_s is None else time.monotonic() + timeout_s
        self.what = what
        self.backoff: Backoff | None = None  # made on the first failure: most operations never need one
        #: Addresses that refused the connection in a row, and since when (made on the first refusal).
        self.refused: set[str] | None = None
        self.refused_since = 0.0
        self.answered()

    def answered(self) -> None:
        """A coordinator served us: the next failure starts a fresh budget."""
        if self.backoff is not None:
            self.backoff.reset()
        self.jumps = 0
        timeout_s = self.client.connect_timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def failed(self, exc: grpc.RpcError) -> None:
        """After a retryable failure: go to the leader a follower named, or wait and try the next address.

        Raises:
            CoordinatorUnavailableError: no coordinator answered within ``connect_timeout_s``.
            TimeoutError: the caller's own deadline passed.
        """
        client = self.client
        if client.address not in client._transport_checked:
            client._transport_checked.add(client.address)
            problem = transport_problem(client.address, exc, client.tls)
            if problem:
                raise AuthenticationError(problem) from exc
        hint = leader_hint(exc)
        if hint and hint != client.address and self.jumps < _MAX_HINT_JUMPS:
            self.jumps += 1
            client._use_address(hint)
            return
        self.jumps = 0
        now = time.monotonic()
        if self.until is not None and now >= self.until:
            raise self.timed_out(exc) from exc
        self._check_refused(exc, now)
        if self.deadline is not None and now >= self.deadline:
            raise CoordinatorUnavailableError(
                f"no coordinator answered at {','.join(client.addresses)} within "
                f"{client.connect_timeout_s:g}s (last error: {_describe(exc)})",
                addresses=list(client.addresses),
                last_error=_describe(exc),
            ) from exc
        remaining = [t - now for t in (self.until, self.deadline) if t is not None]
        if self.backoff is None:
            self.backoff = Backoff(initial_s=_RECONNECT_INITIAL_S, max_s=_RECONNECT_MAX_S)
        delay_s = self.backoff.next_delay(remaining_s=min(remaining) if remaining else None)
        log.debug("coordinator %s unavailable (%s); next attempt in %.2fs", client.address, _describe(exc), delay_s)
        client._next_address()
        time.sleep(delay_s)

    def _check_refused(self, exc: grpc.RpcError, now: float) -> None:
        """Give up early when every address refused the connection and none ever answered.

        A refused connection means nothing listens there: a typo or a coordinator not
        started, which waiting ``connect_timeout_s`` in silence does not heal. A client that
        once reached a coordinator keeps the whole budget (a restart or failover refuses
        for a moment), and so does ``connect_timeout_s=None`` (keep trying).
        """
        client = self.client
        if client._reached or client.connect_timeout_s is None or _REFUSED not in (exc.details() or ""):
            self.refused = None
            return
        if self.refused is None:
            self.refused, self.refused_since = set(), now
        self.refused.add(client.address)
        waited_s = min(REFUSED_GRACE_S, client.connect_timeout_s)
        if now - self.refused_since >= waited_s and self.refused.issuperset(client.addresses):
            raise CoordinatorUnavailableError(
                f"no coordinator answered at {','.join(client.addresses)} within {waited_s:g}s: connection "
                f"refused, nothing listens there (is the coordinator running, and is the address right?)",
                addresses=list(client.addresses),
                last_error=_describe(exc),
            ) from exc

    def timed_out(self, exc: grpc.RpcError | None = None) -> TimeoutError:
        message = f"{self.what} did not finish within {self.timeout_s:g}s"
        if exc is not None and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            message += f" (coordinator {self.client.address} unreachable: {_describe(exc)})"
        return TimeoutError(message)

    def remaining_s(self) -> float | None:
        return None if self.until is None else max(0.0, self.until - time.monotonic())


class Client:
    """Talks to one cluster (a list of coordinators).

    Args:
        coordinator: ``"host:port[,host:port...]"`` or a list of them.
        connect_timeout_s: how long an operation keeps trying to reach a coordinator
            before it raises :class:`CoordinatorUnavailableError`; None keeps trying for
            ever. Not given: ``XPIPE_CONNECT_TIMEOUT`` (seconds, or ``none``), else 30 s.
            A client that never reached a coordinator and finds every address refusing
            the connection gives up after 1 s (``REFUSED_GRACE_S``) instead.
        call_timeout_s: deadline of each unary call.
        otlp_endpoint: ``HOST:PORT`` of an OTLP/gRPC collector (plaintext): each submit
            starts a trace, ``run <pipeline>``, that the coordinator and the workers join
            (docs/tracing.md). None: ``OTEL_EXPORTER_OTLP_ENDPOINT``, else tracing is off.
        trace_sample_ratio: share of runs traced, 0 to 1; None: ``OTEL_TRACES_SAMPLER``
            (default: parent-based, 1.0).
        tls: how to reach the coordinators over TLS (see :class:`~xpipe.security.TLSConfig`);
            None: ``XPIPE_TLS_CA``/``XPIPE_TLS_CERT``/``XPIPE_TLS_KEY`` if set, else plaintext;
            False: plaintext whatever the environment says.
        token: sent as ``authorization: Bearer <token>`` on every call (``user:password``
            is sent as ``Basic``, for LDAP); None: ``XPIPE_TOKEN`` if set, else none.
        namespace: the namespace of runs submitted through this client whose Pipeline
            names none (None: the coordinator's ``default``).

    Raises:
        ValueError: a malformed address, timeout, endpoint or ratio (the message names it).
        SecurityConfigError: a TLS file is missing or not PEM (a ValueError too).
    """

    def __init__(
        self,
        coordinator: str | Sequence[str],
        *,
        connect_timeout_s: float | None | EllipsisType = ...,
        call_timeout_s: float = 30.0,
        otlp_endpoint: str | None = None,
        trace_sample_ratio: float | None = None,
        tls: TLSConfig | None | bool = None,
        token: str | None = None,
        namespace: str | None = None,
    ):
        self.addresses = parse_addresses(coordinator)
        #: Runs this client submits go here unless their Pipeline names a namespace (None: "default").
        self.namespace = check_name("namespace", namespace) if namespace is not None else None
        #: TLS settings in use (None: plaintext) and the credentials made from them once.
        if tls is True:
            raise TypeError("tls=True: pass tls=TLSConfig(ca=...) (or set XPIPE_TLS_CA)")
        self.tls = None if tls is False else tls if tls is not None else TLSConfig.from_env()
        self._credentials = self.tls.channel_credentials() if self.tls is not None else None
        self._token = client_token(token)
        #: Addresses whose first failure was checked for a TLS mismatch (see transport_problem).
        self._transport_checked: set[str] = set()
        self.connect_timeout_s = check_seconds("connect_timeout_s", connect_timeout_setting(connect_timeout_s),
                                               allow_none=True)  # fmt: skip
        #: A coordinator answered this client once: refusals are then a restart, not a typo.
        self._reached = False
        self.call_timeout_s = check_seconds("call_timeout_s", call_timeout_s, allow_none=False)
        #: Where run spans go; None: tracing off (nothing of the OTel SDK is loaded).
        self._tracing = setup_tracing(otlp_endpoint, service_name="xpipe-sdk", sample_ratio=trace_sample_ratio)
        self._index = 0
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub_pair: tuple[pipeline_pb2_grpc.PipelineServiceStub, admin_pb2_grpc.AdminServiceStub] | None = None
        #: Stubs of the other services (audit, governance), made once per channel like the pair.
        self._other_stubs: dict[type, Any] = {}
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    def _stubs(self) -> tuple[pipeline_pb2_grpc.PipelineServiceStub, admin_pb2_grpc.AdminServiceStub]:
        with self._lock:
            if self._closed:
                raise RuntimeError("client is closed")
            if self._channel is None:
                self._channel = self._open_channel(self.addresses[self._index])
                # Made once per channel: a stub builds a callable per RPC (~15 of them), which
                # cost ~100 µs of every call when it was made per call.
                self._stub_pair = (
                    pipeline_pb2_grpc.PipelineServiceStub(self._channel), admin_pb2_grpc.AdminServiceStub(self._channel)
                )
                self._other_stubs = {}
            return self._stub_pair

    def _open_channel(self, address: str) -> grpc.Channel:
        if self._credentials is None:
            channel = grpc.insecure_channel(address, options=_OPTIONS)
        else:
            channel = grpc.secure_channel(address, self._credentials, options=[*_OPTIONS, *self.tls.channel_options()])
        if self._token is not None:  # no interceptor at all without a token: auth-off calls pay nothing
            channel = grpc.intercept_channel(channel, _Authorization(self._token))
        return channel

    def _stub(self, stub_class: type[S]) -> S:
        """A stub of another service (``audit_pb2_grpc.AuditServiceStub``, ...) on the current channel."""
        self._stubs()
        with self._lock:
            stub = self._other_stubs.get(stub_class)
            if stub is None:
                stub = self._other_stubs[stub_class] = stub_class(self._channel)
            return stub

    def _call_on(self, stub_class: type[S], fn: Callable[[S], T]) -> T:
        """Like :meth:`_call`, for an RPC of another service: retried, errors translated."""
        return self._call(lambda *_: fn(self._stub(stub_class)))

    def _next_address(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self._index = (self._index + 1) % len(self.addresses)

    def _use_address(self, address: str) -> None:
        """Switch to ``address`` (a leader named by a follower), adding it to the list if new."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            if address not in self.addresses:
                self.addresses.append(address)
            self._index = self.addresses.index(address)

    @property
    def address(self) -> str:
        """The coordinator currently in use."""
        return self.addresses[self._index]

    def _call(self, fn: Callable[[pipeline_pb2_grpc.PipelineServiceStub, admin_pb2_grpc.AdminServiceStub], T]) -> T:
        attempts = _Attempts(self)
        while True:
            try:
                with translate_rpc_errors(keep=_RETRYABLE):
                    reply = fn(*self._stubs())
            except grpc.RpcError as exc:  # kept untranslated: retryable
                error = exc
            else:
                self._reached = True
                return reply
            attempts.failed(error)

    def _watch(
        self, request: pipeline_pb2.WatchRunRequest, *, timeout_s: Any, what: str
    ) -> Iterator[pipeline_pb2.RunEvent]:
        """Check ``timeout_s`` now, then follow the stream lazily (see :meth:`_follow_stream`)."""
        timeout_s = check_seconds("timeout_s", timeout_s, allow_none=True)
        if not request.results_on_end:
            return self._follow_stream(request, _Attempts(self, timeout_s=timeout_s, what=what))
        request.inline_max_bytes = INLINE_MAX_BYTES
        request.accept_compression[:] = ACCEPT_COMPRESSION
        return self._with_artifacts(self._follow_stream(request, _Attempts(self, timeout_s=timeout_s, what=what)))

    def _with_artifacts(self, events: Iterator[pipeline_pb2.RunEvent]) -> Iterator[pipeline_pb2.RunEvent]:
        """``events``, the final one's results that came by reference read with GetArtifact."""
        for event in events:
            if event.summary.state in TERMINAL_RUN_STATES:
                self._fetch_artifacts(
                    event.summary.run_id, [(t.name, t.result) for t in event.changed if t.HasField("result")],
                    strict=False,
                )
            yield event

    def _follow_stream(
        self, request: pipeline_pb2.WatchRunRequest, attempts: _Attempts
    ) -> Iterator[pipeline_pb2.RunEvent]:
        """Follow a WatchRun stream, reconnecting (with the budget of ``attempts``) when it breaks.

        A request that submits is sent again with its idempotency key until the run's id
        is known; after that a reconnect watches that run.
        """
        current = request

        def resumed(last: pipeline_pb2.RunEvent) -> None:
            nonlocal current
            run_id = last.summary.run_id
            if current.HasField("submit") and run_id:  # submitted: follow it like any other run
                current = pipeline_pb2.WatchRunRequest(
                    run_id=run_id, summary_only=current.summary_only, results_on_end=current.results_on_end,
                    inline_max_bytes=current.inline_max_bytes, accept_compression=current.accept_compression,
                )  # fmt: skip
                attempts.what = f"run {run_id}"

        return self._resumable(lambda timeout: self._stubs()[0].WatchRun(current, timeout=timeout), attempts, resumed)

    def _resumable(
        self, open_stream: Callable[[float | None], Any], attempts: _Attempts, resumed: Callable[[Any], None]
    ) -> Iterator[Any]:
        """Yield a server stream's items, reopening it (with the budget of ``attempts``) when it breaks.

        ``open_stream(timeout_s)`` opens the stream; after a break that came once items had
        arrived, ``resumed(last_item)`` runs before the reopen, so the caller can ask for
        what follows that item.
        """
        while True:
            stream = open_stream(attempts.remaining_s())
            item = None
            try:
                # Only the caller's timeout_s puts a deadline on the stream: that one is ours.
                with translate_rpc_errors(keep=_STREAM_RETRYABLE if attempts.until is None else _STREAM_KEPT):
                    for item in stream:
                        yield item
                self._reached = True
                return
            except grpc.RpcError as exc:  # kept untranslated: retryable, or the caller's deadline
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise attempts.timed_out() from exc
                log.info("%s: stream interrupted (%s); resuming", attempts.what, _describe(exc))
                error = exc
            finally:
                stream.cancel()
            if item is not None:
                self._reached = True
                attempts.answered()
                resumed(item)
            attempts.failed(error)

    # ------------------------------------------------------------------ API

    # Public methods take a Pipeline and return the dataclasses of xpipe._types; the
    # underscored ``*_pb`` ones speak protobuf, for the manager's hot path (and for callers
    # of other languages' habits), so a submit-and-follow pays for no conversion.

    def submit(self, pipeline: Pipeline, *, retry_on_failure: bool = True) -> str:
        """Validate and submit a pipeline; returns the run id once the run is durable.

        Raises:
            PipelineValidationError: the pipeline is malformed (nothing was submitted).
        """
        return self._submit_spec(_spec_of(pipeline, retry_on_failure))

    def _submit_spec(self, spec: common_pb2.PipelineSpec) -> str:
        if self.namespace and not spec.namespace:
            spec.namespace = self.namespace
        request = pipeline_pb2.SubmitPipelineRequest(pipeline=spec, idempotency_key=uuid.uuid4().hex)
        tracing = self._tracing
        if tracing is None:
            return self._call(lambda p, a: p.SubmitPipeline(request, timeout=self.call_timeout_s)).run_id
        # Not waiting for the run: the root span covers the submit only (docs/tracing.md).
        span = start_run_span(tracing, spec.name, len(spec.tasks), request)
        try:
            run_id = self._call(lambda p, a: p.SubmitPipeline(request, timeout=self.call_timeout_s)).run_id
        except BaseException as exc:
            end_run_span(tracing, span, error=exc)
            raise
        end_run_span(tracing, span, run_id=run_id)
        return run_id

    def get_run(self, run_id: str, *, include_results: bool = False) -> RunInfo:
        """The run and its tasks; with ``include_results`` each finished task's decoded value."""
        return RunInfo.from_proto(self._get_run_pb(run_id, include_results=include_results))

    def _get_run_pb(self, run_id: str, *, include_results: bool = False) -> pipeline_pb2.RunInfo:
        request = pipeline_pb2.GetRunRequest(
            run_id=run_id, include_results=include_results, inline_max_bytes=INLINE_MAX_BYTES,
            accept_compression=ACCEPT_COMPRESSION,
        )  # fmt: skip
        info = self._call(lambda p, a: p.GetRun(request, timeout=self.call_timeout_s))
        if include_results:
            self._fetch_artifacts(
                run_id, [(t.name, t.result) for t in info.tasks if t.HasField("result")], strict=False
            )
        return info

    def _fetch_artifacts(
        self, run_id: str, results: list[tuple[str, common_pb2.Payload]], *, strict: bool = True
    ) -> None:
        """Read the results that came by reference (bigger than INLINE_MAX_BYTES) with GetArtifact.

        ``strict`` False (a whole run's results): a reference the coordinator refuses stays
        unread, so one bad result does not hide the others (see :func:`fetch_artifacts`).
        """
        if any(p.artifact_ref or p.codec == common_pb2.CODEC_MAP_PARTS for _, p in results):
            self._call(lambda p, a: fetch_artifacts(p, run_id, results, self.call_timeout_s, strict=strict))

    def list_runs(self, limit: int = 50) -> list[RunSummary]:
        """The newest ``limit`` runs, newest first.

        Raises:
            ValueError: ``limit`` is not an int >= 1.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        request = pipeline_pb2.ListRunsRequest(limit=limit)
        reply = self._call(lambda p, a: p.ListRuns(request, timeout=self.call_timeout_s))
        return [RunSummary.from_proto(r) for r in reply.runs]

    def cancel(self, run_id: str) -> bool:
        """Ask the coordinator to cancel a run; False if it had already ended."""
        request = pipeline_pb2.CancelRunRequest(run_id=run_id)
        return self._call(lambda p, a: p.CancelRun(request, timeout=self.call_timeout_s)).cancelled

    def task_result(self, run_id: str, task: str) -> TaskResult:
        """One task's state and, once it succeeded, its decoded value."""
        request = pipeline_pb2.GetTaskResultRequest(
            run_id=run_id, task=task, inline_max_bytes=INLINE_MAX_BYTES, accept_compression=ACCEPT_COMPRESSION
        )
        reply = self._call(lambda p, a: p.GetTaskResult(request, timeout=self.call_timeout_s))
        if reply.HasField("result"):
            self._fetch_artifacts(run_id, [(task, reply.result)])
        return TaskResult.from_proto(reply, task=task)

    def task_stats(self, names: Sequence[str]) -> dict[str, tuple[float, int]]:
        """Duration history of task names: ``{name: (mean seconds, samples)}`` (known names only)."""
        request = pipeline_pb2.GetTaskStatsRequest(names=list(names))
        reply = self._call(lambda p, a: p.GetTaskStats(request, timeout=self.call_timeout_s))
        return {name: (s.mean_duration_s, s.samples) for name, s in reply.stats.items()}

    def get_logs(self, run_id: str, task: str = "", *, attempt: int = 0) -> list[LogChunk]:
        """What a run's tasks wrote so far (of ``task``; of ``attempt`` when not 0).

        Grouped by task and attempt (in the order each first wrote), oldest first within
        each; :meth:`follow_logs` gives them in the order they arrived instead.

        Raises:
            RunNotFoundError: no such run, or the run has no such task.
            ValueError: ``attempt`` is not an int >= 0.
        """
        request = self._logs_request(run_id, task, attempt, follow=False)
        chunks = self._call(lambda p, a: list(p.GetTaskLogs(request, timeout=self.call_timeout_s)))
        first: dict[tuple[str, int], int] = {}
        for c in chunks:
            first.setdefault((c.task, c.attempt), len(first))
        # sorted() is stable: within each attempt the chunks stay in arrival order.
        ordered = sorted(chunks, key=lambda c: first[(c.task, c.attempt)])
        return [LogChunk.from_proto(c) for c in ordered]

    def follow_logs(
        self, run_id: str, task: str = "", *, attempt: int = 0, timeout_s: float | None = None
    ) -> Iterator[LogChunk]:
        """Yield what the tasks write as they write it, until the task (or run) has finished.

        Output reaches the coordinator within about 0.2 s of being written. The stream ends
        once every task asked about is finished and its output has arrived. A broken stream
        (a coordinator restart, a failover) is resumed after the last chunk yielded, within
        ``connect_timeout_s`` like a watch.

        Raises:
            RunNotFoundError: no such run, or the run has no such task.
            TimeoutError: still going after ``timeout_s``.
            CoordinatorUnavailableError: no coordinator answered within ``connect_timeout_s``.
        """
        request = self._logs_request(run_id, task, attempt, follow=True)
        timeout_s = check_seconds("timeout_s", timeout_s, allow_none=True)
        attempts = _Attempts(self, timeout_s=timeout_s, what=f"following the logs of run {run_id}")

        def resumed(last: pipeline_pb2.TaskLogChunk) -> None:
            request.after_seq = last.seq  # the reopened stream starts after what was yielded

        stream = self._resumable(lambda timeout: self._stubs()[0].GetTaskLogs(request, timeout=timeout), attempts, resumed)
        for chunk in stream:
            yield LogChunk.from_proto(chunk)

    @staticmethod
    def _logs_request(
        run_id: str, task: str, attempt: int, *, follow: bool
    ) -> pipeline_pb2.GetTaskLogsRequest:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be an int >= 0 (0: every attempt), got {attempt!r}")
        return pipeline_pb2.GetTaskLogsRequest(run_id=run_id, task=task or "", attempt=attempt, follow=follow)

    def watch(
        self,
        run_id: str,
        *,
        summary_only: bool = False,
        results_on_end: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[RunEvent]:
        """Yield the run's state, then its changes, until it ends; reconnects on failover.

        After a reconnect the first event again carries every task, so a consumer that
        keeps a name -> state map stays right. ``summary_only`` leaves out task changes;
        ``results_on_end`` makes the final event carry every task with its result.

        Raises:
            TimeoutError: ``timeout_s`` passed before the run ended (it goes on).
            CoordinatorUnavailableError: no coordinator answered for ``connect_timeout_s``.
        """
        events = self._watch_pb(run_id, summary_only=summary_only, results_on_end=results_on_end, timeout_s=timeout_s)
        return _as_domain(events)

    def _watch_pb(
        self, run_id: str, *, summary_only: bool = False, results_on_end: bool = False, timeout_s: float | None = None
    ) -> Iterator[pipeline_pb2.RunEvent]:
        request = pipeline_pb2.WatchRunRequest(run_id=run_id, summary_only=summary_only, results_on_end=results_on_end)
        return self._watch(request, timeout_s=timeout_s, what=f"run {run_id}")

    def submit_and_watch(
        self,
        pipeline: Pipeline,
        *,
        retry_on_failure: bool = True,
        summary_only: bool = False,
        results_on_end: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[RunEvent]:
        """Submit a pipeline and follow its run in one call (one round trip fewer).

        The first event's ``summary.run_id`` names the run. A retry after a lost answer
        carries the same idempotency key, so the run is never started twice; once the run
        id is known, a broken stream continues as :meth:`watch`.

        Raises:
            PipelineValidationError: the pipeline is malformed (nothing was submitted).
            TimeoutError, CoordinatorUnavailableError: as :meth:`watch`.
        """
        spec = _spec_of(pipeline, retry_on_failure)
        events = self._submit_and_watch_pb(
            spec, summary_only=summary_only, results_on_end=results_on_end, timeout_s=timeout_s
        )
        return _as_domain(events)

    def _submit_and_watch_pb(
        self,
        spec: common_pb2.PipelineSpec,
        *,
        summary_only: bool = False,
        results_on_end: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[pipeline_pb2.RunEvent]:
        if self.namespace and not spec.namespace:
            spec.namespace = self.namespace
        request = pipeline_pb2.WatchRunRequest(
            submit=pipeline_pb2.SubmitPipelineRequest(pipeline=spec, idempotency_key=uuid.uuid4().hex),
            summary_only=summary_only,
            results_on_end=results_on_end,
        )
        tracing = self._tracing
        if tracing is None:
            return self._watch(request, timeout_s=timeout_s, what=f"run of pipeline {spec.name!r}")
        # Waiting for the run: the root span lasts until the SDK sees the run end.
        span = start_run_span(tracing, spec.name, len(spec.tasks), request.submit)
        try:
            events = self._watch(request, timeout_s=timeout_s, what=f"run of pipeline {spec.name!r}")
        except BaseException as exc:
            end_run_span(tracing, span, error=exc)
            raise
        return follow_run_span(tracing, span, events, TERMINAL_RUN_STATES)

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker the coordinator knows, lost and disconnected ones included."""
        reply = self._call(lambda p, a: a.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=self.call_timeout_s))
        return [WorkerInfo.from_proto(w) for w in reply.workers]

    def cluster_status(self) -> ClusterStatus:
        """Leader, members, worker counts, unhealthy workers, active runs, open circuits."""
        request = admin_pb2.GetClusterStatusRequest()
        reply = self._call(lambda p, a: a.GetClusterStatus(request, timeout=self.call_timeout_s))
        return ClusterStatus.from_proto(reply)

    def drain(self, worker_name: str) -> bool:
        """Stop sending work to a worker (it finishes what it holds); False if no such live worker."""
        request = admin_pb2.DrainWorkerRequest(name=worker_name)
        return self._call(lambda p, a: a.DrainWorker(request, timeout=self.call_timeout_s)).found

    def forget_workers(self, names: Sequence[str]) -> NodeRecovery:
        """Forget the named workers that are lost or disconnected (see ``NodeRecovery``).

        The coordinator drops them in its next turn (milliseconds), so placement and
        :meth:`cluster_status` stop counting them; one that comes back registers afresh.

        Raises:
            TypeError: ``names`` is a string (a list of names is wanted) or holds a non-string.
        """
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"names must be a list of worker names, got {names!r}")
        request = admin_pb2.ForgetWorkersRequest(names=list(names))
        reply = self._call(lambda p, a: a.ForgetWorkers(request, timeout=self.call_timeout_s))
        return NodeRecovery.from_proto(reply)

    def story(self, run_id: str, task: str = "") -> list[dict[str, Any]]:
        """Every move of a run's tasks (or of one ``task``), oldest first, to tell why it went so.

        Each entry is ``{"time", "stimulus_id", "task", "attempt", "from", "to", "reason"}``
        with states by name (``"RUNNING"``; ``"UNKNOWN"`` where a story rebuilt from the
        store does not know it). Raises the NOT_FOUND error for an unknown run or task.
        """
        request = admin_pb2.GetStoryRequest(run_id=run_id, task=task)
        entries = self._call(lambda p, a: a.GetStory(request, timeout=self.call_timeout_s)).entries
        return [
            {"time": e.time, "stimulus_id": e.stimulus_id, "task": e.task, "attempt": e.attempt,
             "from": TASK_STATES.get(e.from_state, "UNKNOWN"), "to": TASK_STATES.get(e.to_state, "UNKNOWN"),
             "reason": e.reason}
            for e in entries
        ]  # fmt: skip

    def get_audit(self, *, since: float = 0.0, principal: str = "", limit: int = 0, after_seq: int = 0) -> AuditPage:
        """One page of the audit log, oldest first (permission ``audit:read``).

        Args:
            since: Unix seconds: only entries at or after it.
            principal: Only this principal's entries.
            limit: Most entries (0: the coordinator's default, 1,000; at most 10,000).
            after_seq: Paging: the previous page's ``next_after_seq``.
        """
        from ._lineage import AuditPage

        request = audit_pb2.GetAuditRequest(since=since, principal=principal, limit=limit, after_seq=after_seq)
        reply = self._call_on(audit_pb2_grpc.AuditServiceStub, lambda s: s.GetAudit(request, timeout=self.call_timeout_s))
        return AuditPage.from_proto(reply)

    def get_lineage(self, run_id: str) -> LineageGraph:
        """The lineage graph of a run's tracked tasks (permission ``lineage:read``).

        Raises:
            RunNotFoundError: no such run.
        """
        from ._lineage import LineageGraph

        request = audit_pb2.GetLineageRequest(run_id=run_id)
        reply = self._call_on(audit_pb2_grpc.AuditServiceStub, lambda s: s.GetLineage(request, timeout=self.call_timeout_s))
        return LineageGraph.from_proto(reply)

    def install_dependencies(self, packages: Sequence[str], *, timeout_s: float = DEFAULT_INSTALL_TIMEOUT_S) -> InstallReport:
        """pip-install ``packages`` on every connected worker that allows it (``--allow-install``).

        Each entry is a requirement (``"pandas"``, ``"pyyaml>=6"``); no URLs, paths or pip
        options. Returns each worker's answer; nothing is raised for refusals here (see
        :meth:`PipelineManager.install_missing_dependencies` for that).

        Raises:
            RequestRejectedError: a bad entry (named), too many, a bad ``timeout_s``, or no
                worker connected.
        """
        packages = list(packages) if not isinstance(packages, str) else packages
        problem = requirements_problem(packages) or timeout_problem(timeout_s)
        if problem:
            raise RequestRejectedError(f"install_dependencies: {problem}")
        request = admin_pb2.InstallDependenciesRequest(packages=packages, timeout_s=timeout_s)
        # The coordinator answers within timeout_s plus its grace; leave room for the trip.
        deadline_s = timeout_s + 30.0
        reply = self._call(lambda p, a: a.InstallDependencies(request, timeout=deadline_s))
        return InstallReport.from_proto(tuple(packages), reply)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
        if self._tracing is not None:
            self._tracing.flush()  # this client's run spans go out (bounded); the tracing is shared

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
