"""The pure parts of wiring security: what is loopback, how credentials are sent, env defaults."""

from __future__ import annotations

import pytest
from xpipe.coordinator._main import _is_loopback
from xpipe.security._auth import Credential, authorization_value, parse_authorization
from xpipe.security._certs import init_ca
from xpipe.security._errors import SecurityConfigError
from xpipe.security._tls import ENV_TLS_CA, ENV_TLS_CERT, ENV_TOKEN, TLSConfig, client_token


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:7400", True), ("127.1.2.3:0", True), ("[::1]:7400", True), ("localhost:7400", True),
        ("0.0.0.0:7400", False), ("[::]:7400", False), ("10.0.0.5:7400", False), ("coord1.example:7400", False),
        (":7400", False),
    ],
)  # fmt: skip
def test_only_loopback_addresses_count_as_loopback(listen, loopback):
    assert _is_loopback(listen) is loopback


@pytest.mark.parametrize(
    ("token", "credential"),
    [
        ("xpt_abc-_123", Credential(token="xpt_abc-_123")),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkYW5hIn0.sig", Credential(token="eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkYW5hIn0.sig")),
        ("alice:s3cret:with:colons", Credential(user="alice", password="s3cret:with:colons")),
    ],
    ids=["token", "jwt", "ldap"],
)
def test_what_a_client_sends_is_what_the_coordinator_reads(token, credential):
    assert parse_authorization(authorization_value(token)) == credential


def test_tls_and_token_come_from_the_environment_when_not_given(tmp_path, monkeypatch):
    init_ca(tmp_path)
    monkeypatch.delenv(ENV_TLS_CERT, raising=False)
    monkeypatch.setenv(ENV_TLS_CA, str(tmp_path / "ca.pem"))
    monkeypatch.setenv(ENV_TOKEN, " xpt_env \n")
    assert TLSConfig.from_env() == TLSConfig(ca=str(tmp_path / "ca.pem"))
    assert TLSConfig.resolve() == TLSConfig(ca=str(tmp_path / "ca.pem"))
    assert client_token(None) == "xpt_env" and client_token("xpt_given") == "xpt_given"
    monkeypatch.setenv(ENV_TLS_CERT, str(tmp_path / "ca.pem"))  # a cert without its key
    with pytest.raises(SecurityConfigError, match="give both cert and key"):
        TLSConfig.from_env()


def test_no_environment_means_plaintext_and_no_token(monkeypatch):
    for key in (ENV_TLS_CA, ENV_TLS_CERT, "XPIPE_TLS_KEY", ENV_TOKEN):
        monkeypatch.delenv(key, raising=False)
    assert TLSConfig.from_env() is None and client_token(None) is None
