"""Real TLS and mTLS on loopback with certificates from ``xpipe certs``.

A small grpc server (the real grpc stack, real handshakes) answers with the identity it
reads from ``context.auth_context()`` through :func:`identity_from_certificate`, which is
how the coordinator will know which worker or client is calling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from xpipe.security._certs import identity_from_certificate, init_ca, issue_cert

METHOD = "/xpipe.test.Echo/WhoAmI"
CALL_TIMEOUT_S = 5.0


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    certs = context.auth_context().get("x509_pem_cert") or []
    if not certs:
        return b"anonymous"
    identity = identity_from_certificate(certs[0])
    return f"{identity.role}/{identity.name}".encode() if identity else b"no-identity"


@contextlib.contextmanager
def _server(pki: Path, *, require_client_auth: bool, name: str = "coord") -> Iterator[int]:
    creds = grpc.ssl_server_credentials(
        [((pki / f"{name}.key").read_bytes(), (pki / f"{name}.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=require_client_auth,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "xpipe.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)})])  # fmt: skip
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)


def _call(channel: grpc.Channel) -> str:
    with channel:
        return channel.unary_unary(METHOD)(b"", timeout=CALL_TIMEOUT_S).decode()


def _tls_channel(
    port: int, ca: Path, client: tuple[Path, str] | None = None, host: str = "localhost"
) -> grpc.Channel:
    key = cert = None
    if client:
        pki, name = client
        key, cert = (pki / f"{name}.key").read_bytes(), (pki / f"{name}.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=key, certificate_chain=cert
    )
    # Connect to 127.0.0.1 but verify the name the certificate was issued for.
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", host)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d)
    issue_cert(d, name="coord", role="coordinator")
    issue_cert(d, name="w1", role="worker")
    issue_cert(d, name="dana", role="client", key_type="rsa")
    return d


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("other-pki")
    init_ca(d)
    issue_cert(d, name="w1", role="worker")  # same name, other CA: must not pass as w1
    issue_cert(d, name="coord", role="coordinator")
    return d


def _code(exc_info) -> grpc.StatusCode:
    return exc_info.value.code()


def test_tls_client_with_the_ca_connects_without_a_client_cert(pki):
    with _server(pki, require_client_auth=False) as port:
        assert _call(_tls_channel(port, pki / "ca.pem")) == "anonymous"
        assert _call(_tls_channel(port, pki / "ca.pem", host="127.0.0.1")) == "anonymous"  # the IP SAN


def test_plaintext_client_fails_against_tls(pki):
    with _server(pki, require_client_auth=False) as port:
        with pytest.raises(grpc.RpcError) as exc:
            _call(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_servers_ca_fails(pki, other_pki):
    with _server(pki, require_client_auth=False) as port:
        with pytest.raises(grpc.RpcError) as exc:
            _call(_tls_channel(port, other_pki / "ca.pem"))
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE


def test_server_name_outside_the_sans_fails(pki):
    with _server(pki, require_client_auth=False) as port:
        with pytest.raises(grpc.RpcError) as exc:
            _call(_tls_channel(port, pki / "ca.pem", host="coordinator.elsewhere.test"))
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_sees_the_clients_identity(pki):
    with _server(pki, require_client_auth=True) as port:
        assert _call(_tls_channel(port, pki / "ca.pem", (pki, "w1"))) == "worker/w1"
        assert (
            _call(_tls_channel(port, pki / "ca.pem", (pki, "dana"))) == "client/dana"
        )  # an RSA key works too


def test_mtls_refuses_a_cert_from_another_ca_and_no_cert(pki, other_pki):
    with _server(pki, require_client_auth=True) as port:
        with pytest.raises(grpc.RpcError) as exc:
            _call(_tls_channel(port, pki / "ca.pem", (other_pki, "w1")))
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as exc:
            _call(_tls_channel(port, pki / "ca.pem"))
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE
        # The server still serves good clients after refusing bad ones.
        assert _call(_tls_channel(port, pki / "ca.pem", (pki, "w1"))) == "worker/w1"
