"""What authentication and RBAC cost per call (docs/security.md, "Cost").

A script, not a test: ``python -m bench.security_cost [--calls 20000] [--repeats 5]``.

In process, no sockets: the handler :meth:`CallGuard.wrap` builds for a unary RPC is
awaited ``--calls`` times, with auth off (what every coordinator without ``--auth``
runs) and with ``--auth tokens:`` (the caller sends a bearer token; the call is
authenticated, authorized against the built-in roles, and its caller set). A minimal
stand-in for grpc's servicer context answers ``invocation_metadata()``; everything else is
the real code. Also timed alone: :meth:`TokenAuthenticator.authenticate` (one token
check: SHA-256 and a dict lookup), the SDK's authorization metadata on a call, and the
per-call work of a JWT check. Best of ``--repeats`` each, variants alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

import grpc
from xpipe._proto import pipeline_pb2
from xpipe.coordinator._auditsink import NullAudit
from xpipe.coordinator._authn import CallAuth, NamespaceCache, Security
from xpipe.coordinator._guard import CallGuard
from xpipe.security._auth import authenticator_from_spec
from xpipe.security._rbac import DEFAULT_POLICY
from xpipe.security._tokens import TokenAuthenticator, create_token

METHOD = "/xpipe.v1.PipelineService/GetTaskStats"  # unary, run:read, not namespaced, not audited


class _Context:
    """What the wrapper reads of a grpc.aio servicer context on an allowed call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def invocation_metadata(self):
        return self._metadata

    def auth_context(self):
        return {}

    async def abort(self, code, details):
        raise AssertionError(f"refused in a benchmark: {code} {details}")


async def _inner(request, context):
    return None


def _handler(guard: CallGuard):
    plain = grpc.unary_unary_rpc_method_handler(
        _inner, pipeline_pb2.GetTaskStatsRequest.FromString, pipeline_pb2.GetTaskStatsResponse.SerializeToString
    )
    return guard.wrap(METHOD, plain).unary_unary


async def _time(fn, request, context, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await fn(request, context)
    return time.perf_counter() - start


async def _unknown(run_id: str) -> None:
    return None


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.security_cost")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    opts = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = Path(tmp) / "tokens.json"
        token = create_token(tokens_file, principal="bench", roles=["viewer"])
        security = Security(authenticator=authenticator_from_spec(f"tokens:{tokens_file}"))
        auth = CallAuth(security, policy=lambda: DEFAULT_POLICY, audit=NullAudit,
                        run_namespace=NamespaceCache(lambda run_id: None, _unknown))  # fmt: skip
        off = _handler(CallGuard(lambda: False))
        on = _handler(CallGuard(lambda: False, auth))
        request = pipeline_pb2.GetTaskStatsRequest()
        no_metadata = _Context(())
        with_token = _Context((("authorization", f"Bearer {token}"),))
        best = {"direct": float("inf"), "off": float("inf"), "on": float("inf")}
        loop = asyncio.new_event_loop()
        gc.disable()
        try:
            for _ in range(opts.repeats):
                best["direct"] = min(best["direct"], loop.run_until_complete(_time(_inner, request, no_metadata, opts.calls)))
                best["off"] = min(best["off"], loop.run_until_complete(_time(off, request, no_metadata, opts.calls)))
                best["on"] = min(best["on"], loop.run_until_complete(_time(on, request, with_token, opts.calls)))
            tokens = TokenAuthenticator(tokens_file)
            token_s = min(_timeit(lambda: tokens.authenticate(token), opts.calls) for _ in range(opts.repeats))
            jwt_s = _jwt_check_s(Path(tmp), opts.calls, opts.repeats)
        finally:
            gc.enable()
            loop.close()
    per = {k: v / opts.calls * 1e6 for k, v in best.items()}
    print(f"calls: {opts.calls}, best of {opts.repeats}")
    print(f"handler alone:                        {per['direct']:.2f} us/call")
    print(f"CallGuard.wrap, auth off:             {per['off']:.2f} us/call ({per['off'] - per['direct']:+.2f} over the handler)")
    print(f"CallGuard.wrap, --auth tokens:        {per['on']:.2f} us/call ({per['on'] - per['off']:+.2f} over auth off)")
    print(f"TokenAuthenticator.authenticate:      {token_s / opts.calls * 1e6:.2f} us/check")
    print(f"JwtAuthenticator.authenticate (HS256): {jwt_s / opts.calls * 1e6:.2f} us/check")


def _timeit(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def _jwt_check_s(tmp: Path, calls: int, repeats: int) -> float:
    import jwt

    secret = tmp / "jwt.secret"
    secret.write_bytes(b"k" * 48)
    check = authenticator_from_spec(f"jwt:hs256:{secret}").inner
    token = jwt.encode({"sub": "bench", "aud": "xpipe", "exp": int(time.time()) + 3600, "roles": ["viewer"]},
                       secret.read_bytes(), algorithm="HS256")  # fmt: skip
    return min(_timeit(lambda: check.authenticate(token), calls) for _ in range(repeats))


if __name__ == "__main__":
    main()
