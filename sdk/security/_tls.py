"""TLS settings of every xpipe channel: the client's :class:`TLSConfig`, the server's credentials.

One place builds gRPC credentials from PEM files, so the SDK, the CLI, the worker and the
coordinator read the same flags and env vars the same way. Files are checked when the
setting is made (a missing or unreadable file names itself), not at the first connection,
where gRPC would only say UNAVAILABLE.

Clients verify the coordinator's name against its certificate: certificates from
``xpipe certs issue --role coordinator`` carry ``localhost`` and ``127.0.0.1`` unless given
``--san``, so the embedded default and loopback tests need no override.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._errors import SecurityConfigError

__all__ = [
    "CLIENT_AUTH_MODES",
    "CLIENT_SECURITY_ENV",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TOKEN",
    "TLSConfig",
    "client_token",
    "read_pem",
    "server_credentials",
    "speaks_tls",
    "tls_refusal",
]

ENV_TLS_CA = "XPIPE_TLS_CA"
ENV_TLS_CERT = "XPIPE_TLS_CERT"
ENV_TLS_KEY = "XPIPE_TLS_KEY"
ENV_TOKEN = "XPIPE_TOKEN"
#: Every env var a client (SDK, CLI, worker) reads its transport security from.
CLIENT_SECURITY_ENV = (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TOKEN)

#: ``--tls-client-auth``: ``none`` asks no client certificate; ``require`` refuses a handshake
#: without one that chains to ``--tls-ca`` (mTLS). There is no ``request`` (verify one if
#: sent): grpc's Python API has only "require" or "do not ask" (``require_client_auth``).
CLIENT_AUTH_MODES = ("none", "require")


def read_pem(what: str, path: str | os.PathLike[str]) -> bytes:
    """The bytes of a PEM file, checked to hold PEM.

    Raises:
        SecurityConfigError: the file is missing, unreadable or not PEM (names ``what`` and the path).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"TLS {what} file {str(p)!r}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"TLS {what} file {str(p)!r}: not a PEM file (no -----BEGIN line)")
    return data


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How a client (SDK, CLI, worker) reaches a coordinator over TLS.

    Attributes:
        ca: PEM file of the CA the coordinator's certificate must chain to; None trusts
            the system's roots.
        cert: This client's certificate (PEM), for mTLS; give ``key`` with it.
        key: This client's private key (PEM).
        server_name: The name to verify in the coordinator's certificate instead of the
            address's host (when coordinators are reached by an address the certificate
            does not carry).

    Raises:
        SecurityConfigError: a file is missing, unreadable or not PEM, or only one of
            ``cert`` and ``key`` is given.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    _pem: tuple[bytes | None, bytes | None, bytes | None] = (None, None, None)

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SecurityConfigError("TLS client certificate and key go together: give both cert and key, or neither")
        ca = read_pem("CA", self.ca) if self.ca is not None else None
        cert = read_pem("certificate", self.cert) if self.cert is not None else None
        key = read_pem("key", self.key) if self.key is not None else None
        object.__setattr__(self, "_pem", (ca, cert, key))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TLSConfig | None:
        """The setting ``XPIPE_TLS_CA`` / ``XPIPE_TLS_CERT`` / ``XPIPE_TLS_KEY`` make, or None if none is set."""
        env = os.environ if env is None else env
        ca, cert, key = (env.get(k) or None for k in (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY))
        if ca is None and cert is None and key is None:
            return None
        return cls(ca=ca, cert=cert, key=key)

    @classmethod
    def resolve(cls, ca: str | None = None, cert: str | None = None, key: str | None = None) -> TLSConfig | None:
        """From flags (``--tls-ca/--tls-cert/--tls-key``) if any is given, else from the env vars."""
        if ca or cert or key:
            return cls(ca=ca or None, cert=cert or None, key=key or None)
        return cls.from_env()

    def channel_credentials(self):
        """gRPC channel credentials (loads grpc only here: the SDK's pure parts do not need it)."""
        import grpc

        ca, cert, key = self._pem
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, str]]:
        """Extra channel options: the name to verify, when ``server_name`` is set."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_token(token: str | None) -> str | None:
    """The token a client sends: ``token`` if given, else ``$XPIPE_TOKEN``, else None."""
    token = token if token is not None else os.environ.get(ENV_TOKEN)
    return token.strip() or None if token else None


def server_credentials(cert: str, key: str, ca: str | None, client_auth: str):
    """gRPC server credentials for ``--tls-cert/--tls-key/--tls-ca/--tls-client-auth``.

    Raises:
        SecurityConfigError: a file is unusable, an unknown mode, or ``require`` without a
            CA to verify client certificates against.
    """
    import grpc

    if client_auth not in CLIENT_AUTH_MODES:
        raise SecurityConfigError(f"--tls-client-auth {client_auth!r}: expected one of {', '.join(CLIENT_AUTH_MODES)}")
    if client_auth == "require" and not ca:
        raise SecurityConfigError("--tls-client-auth require needs --tls-ca (the CA client certificates must chain to)")
    pair = (read_pem("key", key), read_pem("certificate", cert))
    root = read_pem("CA", ca) if ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=client_auth == "require")


def tls_refusal(address: str, tls: TLSConfig, timeout_s: float = 1.0) -> str:
    """Why the TLS server at ``host:port`` refuses this client's settings, or "" (it accepts them).

    Used once, after a TLS connection was dropped, so that a certificate from another CA
    (or an untrusted server) is reported at once: under TLS 1.3 the server checks the
    client's certificate after the handshake and only closes the socket, which gRPC
    reports as a bare UNAVAILABLE "Socket closed". The server's name is not checked here.
    """
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=tls.ca) if tls.ca else ssl.create_default_context()
    context.check_hostname = False
    if tls.cert and tls.key:
        context.load_cert_chain(tls.cert, tls.key)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw) as conn:  # fmt: skip
            conn.do_handshake()
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # the server's verdict comes on first read
            if conn.recv(1):
                return ""  # it answered HTTP/2: these settings are accepted
    except ssl.SSLCertVerificationError as exc:
        return f"this client does not trust the server's certificate: {exc.verify_message}"
    except ssl.SSLError as exc:
        return f"the server refused this client's certificate ({exc.reason or exc})"
    except (OSError, ValueError):
        return ""
    # Closed right after the handshake: the server checked our certificate and refused it.
    if tls.cert:
        return "the server closed the connection after the handshake: it refused this client's certificate (another CA?)"
    return "the server closed the connection after the handshake: it requires a client certificate (mTLS: give cert and key)"


def speaks_tls(address: str, timeout_s: float = 1.0) -> bool:
    """Whether the server at ``host:port`` answers a TLS handshake (certificate unchecked).

    Used once, after a plaintext connection failed, to tell a user that the coordinator
    wants TLS instead of retrying for the whole connect timeout. A TLS server answers a
    ClientHello (handshake done, or a TLS alert such as "certificate required"); a
    plaintext gRPC server answers with HTTP/2 bytes, which is not TLS.
    """
    host, _, port = address.rpartition(":")
    # A bare context: create_default_context() loads the system's CA bundle, ~50 ms of CPU
    # that a client waiting for a dead coordinator must not spend (no certificate is checked).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=None) as tls:  # fmt: skip
            tls.do_handshake()
        return True
    except ssl.SSLError as exc:
        return "ALERT" in (exc.reason or "").upper()
    except (OSError, ValueError):
        return False
