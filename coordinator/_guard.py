"""What every call to the coordinator passes first: the stop gate and the malformed-request check.

Both used to be grpc.aio server interceptors. An interceptor runs per call: grpc.aio
awaits ``intercept_service`` for each one and the wrappers it returns are built anew,
and for a stream every message went through one more async generator. Here the same
checks are bound once, when the servicers are registered (:class:`GuardedRegistrar`
stands in for the server in the generated ``add_*_to_server`` functions), so a call
costs one plain wrapper at most. A handler that does the checks itself (the worker
stream, whose every message is on the hot path) is marked with :func:`checks_itself` and
gets only the safe deserializer.

With auth on (see ``_authn``), :meth:`CallGuard.wrap` also binds each handler's permission
from ``RPC_PERMISSIONS`` once, and the call is admitted (authenticated, authorized, its
caller set) after the stop gate and the malformed check; a method missing from the table
is refused (fail closed); public methods (health) get no auth wrapper. With auth off the
handlers are exactly what they were: no wrapper, no metadata read.
The guard also answers, for every call, stored data this coordinator cannot decrypt
(:class:`~xpipe.security.DecryptionError`: a key id missing from its keyring, altered
data) with FAILED_PRECONDITION and the error's message naming the key id: the call
fails, the coordinator goes on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

import grpc
from xpipe.security._errors import DecryptionError
from xpipe.security._rbac import PUBLIC, permission_for_rpc

if TYPE_CHECKING:
    from ._authn import CallAuth

__all__ = ["CallGuard", "GuardedRegistrar", "Malformed", "abort_malformed", "checks_itself"]

#: A stopping coordinator refuses calls until none came for this long (within its grace)
#: before the server itself stops: a call the server stops under is CANCELLED, not refused.
REFUSE_QUIET_S = 0.05

_SELF_CHECKED = "_xpipe_checks_itself"


class Malformed:
    """Stands in for a request that did not parse, so the handler can answer INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and friends: hostile or corrupt bytes
            return Malformed(exc)

    return parse


async def abort_malformed(context, method: str, bad: Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: {bad.error}")


def checks_itself(fn):
    """Mark a stream-stream servicer method that refuses calls while stopping and checks
    each request for :class:`Malformed` itself (see :meth:`CallGuard.refuse`)."""
    setattr(fn, _SELF_CHECKED, True)
    return fn


class CallGuard:
    """Refuse new calls with UNAVAILABLE once the coordinator stops; count unary calls.

    Clients retry UNAVAILABLE (elsewhere or later), so a stopping coordinator refuses work
    cleanly while its engine still runs; :meth:`Coordinator.stop` waits for the unary calls
    in flight (a submit being committed, say) before it stops the engine. Streams are not
    counted: the engine's stop ends them. Requests that do not parse are answered
    INVALID_ARGUMENT naming the method, instead of gRPC's bare UNKNOWN.
    """

    def __init__(self, stopping: Callable[[], bool], auth: CallAuth | None = None):
        self.stopping = stopping
        #: Authenticates and authorizes calls; None: auth is off (every caller is LOCAL).
        self.auth = auth
        self.in_flight = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self.last_refused = 0.0  # loop time of the last call turned away

    async def refuse(self, context) -> None:
        """Answer UNAVAILABLE: the coordinator is stopping (raises, like ``context.abort``)."""
        self.last_refused = asyncio.get_running_loop().time()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down; try again")

    async def settle(self) -> None:
        """Return when no counted call is in flight."""
        while self.in_flight:
            await self.settled.wait()

    async def quiet(self) -> None:
        """Return once no call was turned away for :data:`REFUSE_QUIET_S`."""
        loop = asyncio.get_running_loop()
        while (left_s := self.last_refused + REFUSE_QUIET_S - loop.time()) > 0:
            await asyncio.sleep(left_s)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same handler behind the stop gate and the malformed check (built once)."""
        if handler.request_deserializer is None:
            return handler
        if self.auth is not None:
            handler = _admitting(self.auth, method, handler)
        parse = _safe(handler.request_deserializer)
        out = handler.response_serializer
        gate = self
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                if gate.stopping():
                    await gate.refuse(context)
                if isinstance(request, Malformed):
                    await abort_malformed(context, method, request)
                gate.in_flight += 1
                gate.settled.clear()
                try:
                    return await inner(request, context)
                except DecryptionError as exc:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                finally:
                    gate.in_flight -= 1
                    if not gate.in_flight:
                        gate.settled.set()

            return grpc.unary_unary_rpc_method_handler(unary_unary, parse, out)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                if gate.stopping():
                    await gate.refuse(context)
                if isinstance(request, Malformed):
                    await abort_malformed(context, method, request)
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except DecryptionError as exc:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

            return grpc.unary_stream_rpc_method_handler(unary_stream, parse, out)
        if handler.stream_stream is not None:
            inner_bidi = handler.stream_stream
            if getattr(inner_bidi, _SELF_CHECKED, False):
                return grpc.stream_stream_rpc_method_handler(inner_bidi, parse, out)

            async def checked(requests, context):
                async for request in requests:
                    if isinstance(request, Malformed):
                        await abort_malformed(context, method, request)
                    yield request

            async def stream_stream(requests, context):
                if gate.stopping():
                    await gate.refuse(context)
                async for item in inner_bidi(checked(requests, context), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(stream_stream, parse, out)
        inner_client = handler.stream_unary  # no such method of ours; kept correct all the same

        async def stream_unary(requests, context):
            if gate.stopping():
                await gate.refuse(context)
            return await inner_client(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, out)


def _admitting(auth: CallAuth, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` behind :meth:`CallAuth.admit` with its permission bound now, once.

    A method missing from ``RPC_PERMISSIONS`` answers PERMISSION_DENIED (fail closed); a
    public one (health) is returned as is; a stream that checks itself (the worker stream,
    see :func:`checks_itself`) admits its caller when it opens.
    """
    permission = permission_for_rpc(method)
    des, ser = handler.request_deserializer, handler.response_serializer
    if permission is None:
        message = f"{method} is not in the RPC permission table; refused (fail closed)"

        async def closed(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

        async def closed_stream(request, context):  # the guard iterates streams: a generator
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            yield  # unreachable: abort raises

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(closed, des, ser)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(closed_stream, des, ser)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(closed, des, ser)
        return grpc.stream_stream_rpc_method_handler(closed_stream, des, ser)
    if permission == PUBLIC:
        return handler
    admit = auth.admit
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await admit(method, permission, request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def unary_stream(request, context):
            await admit(method, permission, request, context)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
    if handler.stream_stream is not None:
        inner_bidi = handler.stream_stream
        if getattr(inner_bidi, _SELF_CHECKED, False):
            return handler

        async def stream_stream(requests, context):
            await admit(method, permission, None, context)
            async for item in inner_bidi(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
    inner_client = handler.stream_unary

    async def stream_unary(requests, context):
        await admit(method, permission, None, context)
        return await inner_client(requests, context)

    return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose handlers are guarded, each wrapped on first use."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: CallGuard):
        self._inner = inner
        self._guard = guard
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None  # not cached: method names come from clients, unknown ones too
            wrapped = self._wrapped[method] = self._guard.wrap(method, handler)
        return wrapped


class GuardedRegistrar:
    """Stands in for the server in generated ``add_*Servicer_to_server`` functions: every
    method handler is wrapped by :meth:`CallGuard.wrap` once, then registered for real.

    The generated functions register each service twice, as a generic handler (grpc's
    fallback lookup) and as registered methods; both get guarded handlers.
    """

    def __init__(self, server: grpc.aio.Server, guard: CallGuard):
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(g, self._guard) for g in generic_handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        guard = self._guard
        self._server.add_registered_method_handlers(
            service, {name: guard.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )
