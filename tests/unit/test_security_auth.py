"""Auth sources by --auth spec, and the authorization metadata value."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from xpipe.security._auth import Credential, authenticator_from_spec, parse_authorization
from xpipe.security._errors import SecurityConfigError
from xpipe.security._tokens import create_token


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer xpt_abc", Credential(token="xpt_abc")),
        ("bearer   xpt_abc  ", Credential(token="xpt_abc")),
        (_basic("alice:pa:ss"), Credential(user="alice", password="pa:ss")),
        (_basic("alice"), None),
        (_basic(":pw"), None),
        ("Basic !!!", None),
        ("Bearer", None),
        ("Digest abc", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_authorization(value, expected):
    assert parse_authorization(value) == expected


def test_tokens_and_jwt_specs_build_working_authenticators(tmp_path):
    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "dana", roles=["viewer"])
    auth = authenticator_from_spec(f"tokens:{tokens}")
    assert auth.check(parse_authorization(f"Bearer {token}")).name == "dana"
    assert auth.check(Credential(user="dana", password="x")) is None
    secret = tmp_path / "secret"
    secret.write_bytes(b"k" * 32)
    auth = authenticator_from_spec(f"jwt:hs256:{secret}")
    good = jwt.encode(
        {"sub": "svc", "aud": "xpipe", "exp": int(time.time()) + 60}, b"k" * 32, algorithm="HS256"
    )
    assert auth.check(Credential(token=good)).name == "svc"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("kerberos:x", r"unknown scheme 'kerberos' \(expected one of: tokens:, jwt:, ldap:, ldaps:\)"),
        ("tokens:", "expected tokens:/path"),
        ("tokens:/nonexistent/tokens.json", "no tokens file at /nonexistent/tokens.json"),
        ("ldap://127.0.0.1:389", "LDAP needs its settings file"),
    ],
)
def test_bad_specs_are_named(spec, match):
    with pytest.raises(SecurityConfigError, match=match):
        authenticator_from_spec(spec)


def test_the_package_exports_resolve_lazily():
    """``import xpipe.security`` stays cheap: cryptography loads only when a name needs it."""
    import subprocess
    import sys

    import xpipe.security

    assert set(xpipe.security.__all__) == set(xpipe.security._EXPORTS) and len(xpipe.security.__all__) == 26
    for name in xpipe.security.__all__:
        assert getattr(xpipe.security, name) is not None
    probe = "import sys, xpipe.security; print('cryptography' in sys.modules, 'ldap3' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]
