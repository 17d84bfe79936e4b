"""The auth check bound by ``CallGuard.wrap``: fail closed, malformed credentials, the caller
set for the handler, the audit of refusals and of audited calls, and nothing at all when
auth is off. A real grpc.aio server on loopback, in a background loop of this process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from xpipe.coordinator._authn import CallAuth, NamespaceCache, Security
from xpipe.coordinator._caller import LOCAL, caller
from xpipe.coordinator._guard import CallGuard, GuardedRegistrar
from xpipe.security._auth import authenticator_from_spec
from xpipe.security._rbac import DEFAULT_POLICY
from xpipe.security._tokens import create_token

MAPPED = "/xpipe.v1.AdminService/DrainWorker"  # worker:drain, audited as a mutation
CALL_TIMEOUT_S = 5.0


class _Audit:
    def __init__(self) -> None:
        self.entries: list[dict] = []

    def record(self, **entry) -> None:
        self.entries.append(entry)


async def _whoami(request: bytes, context) -> bytes:
    return caller().name.encode()


async def _unknown(run_id: str) -> None:
    return None


class _Served:
    """A grpc.aio server whose handlers are registered through GuardedRegistrar."""

    def __init__(self, auth: CallAuth | None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="guard-loop", daemon=True)
        self.thread.start()
        self.guard = CallGuard(lambda: False, auth)
        self.port = self.run(self._start())

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        handlers = {name: grpc.unary_unary_rpc_method_handler(_whoami, bytes, bytes)
                    for name in ("DrainWorker", "NotInTheTable")}  # fmt: skip
        GuardedRegistrar(self.server, self.guard).add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("xpipe.v1.AdminService", handlers),)
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def call(self, method: str, metadata=()) -> str:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            return channel.unary_unary(method)(b"", metadata=metadata, timeout=CALL_TIMEOUT_S).decode()

    def close(self) -> None:
        try:
            self.run(self.server.stop(None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def tokens(tmp_path) -> tuple[str, dict[str, str]]:
    path = tmp_path / "tokens.json"
    return str(path), {name: create_token(path, principal=name, roles=[name]) for name in ("operator", "viewer")}


@pytest.fixture
def secured(tokens) -> Iterator[tuple[_Served, _Audit, dict[str, str]]]:
    path, issued = tokens
    audit = _Audit()
    auth = CallAuth(Security(authenticator=authenticator_from_spec(f"tokens:{path}")), policy=lambda: DEFAULT_POLICY,
                    audit=lambda: audit, run_namespace=NamespaceCache(lambda run_id: None, _unknown))  # fmt: skip
    served = _Served(auth)
    try:
        yield served, audit, issued
    finally:
        served.close()


def _bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def test_an_allowed_call_runs_as_its_caller_and_is_audited(secured):
    served, audit, issued = secured
    assert served.call(MAPPED, _bearer(issued["operator"])) == "operator"
    assert audit.entries == [{"principal": "operator", "action": MAPPED, "target": ""}]


def test_a_method_missing_from_the_table_is_refused_even_for_a_valid_caller(secured):
    served, _, issued = secured
    with pytest.raises(grpc.RpcError) as exc:
        served.call("/xpipe.v1.AdminService/NotInTheTable", _bearer(issued["operator"]))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not in the RPC permission table" in exc.value.details()


@pytest.mark.parametrize(
    ("value", "code", "named"),
    [
        ("Token abc", grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata"),
        ("Bearer xpt_nobody", grpc.StatusCode.UNAUTHENTICATED, "not valid"),
        ("Basic !!!", grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata"),
    ],
    ids=["unknown-scheme", "unknown-token", "bad-basic"],
)
def test_bad_credentials_are_refused_and_the_refusal_audited(secured, value, code, named):
    served, audit, _ = secured
    with pytest.raises(grpc.RpcError) as exc:
        served.call(MAPPED, (("authorization", value),))
    assert exc.value.code() == code and named in exc.value.details()
    assert [(e["principal"], e["action"], e["outcome"].split(":")[0]) for e in audit.entries] == [
        ("anonymous", MAPPED, code.name)
    ]


def test_a_viewer_refused_is_audited_with_the_missing_permission(secured):
    served, audit, issued = secured
    with pytest.raises(grpc.RpcError) as exc:
        served.call(MAPPED, _bearer(issued["viewer"]))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert audit.entries[0]["principal"] == "viewer" and "worker:drain" in audit.entries[0]["outcome"]


def test_with_auth_off_nothing_is_read_and_every_caller_is_local():
    served = _Served(None)
    try:
        assert served.guard.auth is None
        # Even a method outside the table answers: with auth off there is no table check.
        assert served.call(MAPPED, (("authorization", "Token junk"),)) == LOCAL.name
        assert served.call("/xpipe.v1.AdminService/NotInTheTable") == LOCAL.name
    finally:
        served.close()
