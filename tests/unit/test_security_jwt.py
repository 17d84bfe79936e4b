"""JwtAuthenticator: good tokens pass; expired, wrong audience or key, and alg confusion fail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from xpipe.security._errors import SecurityConfigError
from xpipe.security._jwt import JwtAuthenticator, JwtSpec

SECRET = b"s" * 48


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _claims(**over):
    claims = {"sub": "dana", "aud": "xpipe", "exp": int(time.time()) + 300, "roles": ["submitter"],
              "permissions": ["customer_data_read"], "namespaces": ["default"]}  # fmt: skip
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
def hs(tmp_path):
    path = tmp_path / "jwt.secret"
    path.write_bytes(SECRET + b"\n")
    return JwtAuthenticator(f"jwt:hs256:{path}")


@pytest.fixture
def rs(tmp_path, rsa_key):
    path = tmp_path / "idp.pem"
    path.write_bytes(_public_pem(rsa_key))
    return JwtAuthenticator(f"jwt:rs256:{path},audience=xpipe-prod,issuer=https://idp.test")


def test_good_hs256_token(hs):
    p = hs.authenticate(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert (p.name, p.roles, p.permissions, p.namespaces, p.source) == (
        "dana", frozenset({"submitter"}), frozenset({"customer_data_read"}), frozenset({"default"}), "jwt")  # fmt: skip


def test_good_rs256_token_with_issuer(rs, rsa_key):
    token = jwt.encode(_claims(aud="xpipe-prod", iss="https://idp.test"), rsa_key, algorithm="RS256")
    assert rs.authenticate(token).name == "dana"
    assert (
        rs.authenticate(
            jwt.encode(_claims(aud="xpipe-prod", iss="https://evil.test"), rsa_key, algorithm="RS256")
        )
        is None
    )
    assert (
        rs.authenticate(jwt.encode(_claims(aud="xpipe-prod"), rsa_key, algorithm="RS256")) is None
    )  # iss required


def test_expired_token_is_refused(hs):
    assert hs.authenticate(jwt.encode(_claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")) is None


@pytest.mark.parametrize("missing", ["exp", "aud", "sub"])
def test_required_claims(hs, missing):
    assert hs.authenticate(jwt.encode(_claims(**{missing: None}), SECRET, algorithm="HS256")) is None


def test_wrong_audience_is_refused(hs):
    assert hs.authenticate(jwt.encode(_claims(aud="another-service"), SECRET, algorithm="HS256")) is None


def test_wrong_key_is_refused(hs, rs):
    assert hs.authenticate(jwt.encode(_claims(), b"t" * 48, algorithm="HS256")) is None
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (
        rs.authenticate(
            jwt.encode(_claims(aud="xpipe-prod", iss="https://idp.test"), other, algorithm="RS256")
        )
        is None
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_confusion_hs256_signed_with_the_rsa_public_key_is_refused(rs, rsa_key):
    # Forged by hand: pyjwt itself refuses to HMAC with a PEM key, but an attacker is not pyjwt.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims(aud="xpipe-prod", iss="https://idp.test")).encode())
    sig = hmac.new(_public_pem(rsa_key), f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert rs.authenticate(f"{header}.{body}.{_b64(sig)}") is None
    none_token = f"{_b64(json.dumps({'alg': 'none'}).encode())}.{body}."
    assert rs.authenticate(none_token) is None


def test_malformed_claims_and_garbage_are_refused(hs):
    assert hs.authenticate(jwt.encode(_claims(roles="admin"), SECRET, algorithm="HS256")) is None
    assert hs.authenticate("not.a.jwt") is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("jwt:hs512:/x", "unknown JWT algorithm 'hs512'"),
        ("jwt:hs256", "expected jwt:hs256:/path/secret"),
        ("tokens:/x", "expected jwt:hs256"),
        ("jwt:hs256:/x,audiense=a", "bad option 'audiense=a'"),
        ("jwt:hs256:/x,leeway_s=9999", "leeway_s must be seconds from 0 to 300"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(SecurityConfigError, match=match):
        JwtSpec.parse(spec)


def test_bad_keys_are_refused_at_construction(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"tooshort")
    with pytest.raises(SecurityConfigError, match="8 bytes; HS256 needs at least 32"):
        JwtAuthenticator(f"jwt:hs256:{short}")
    with pytest.raises(SecurityConfigError, match="cannot read"):
        JwtAuthenticator(f"jwt:hs256:{tmp_path / 'missing'}")
    ec_pem = tmp_path / "ec.pem"
    ec_pem.write_bytes(_public_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(SecurityConfigError, match="RS256 needs an RSA key"):
        JwtAuthenticator(f"jwt:rs256:{ec_pem}")
    with pytest.raises(SecurityConfigError, match="not a PEM public key"):
        JwtAuthenticator(f"jwt:rs256:{short}")


def test_identity_provider_subjects_are_principals_as_they_are(hs):
    """IdPs use subjects like ``auth0|5f1c`` or e-mail addresses; only whitespace is refused."""
    assert (
        hs.authenticate(jwt.encode(_claims(sub="auth0|5f1c"), SECRET, algorithm="HS256")).name == "auth0|5f1c"
    )
    assert hs.authenticate(jwt.encode(_claims(sub="dana@example.org"), SECRET, algorithm="HS256")) is not None
    assert hs.authenticate(jwt.encode(_claims(sub="dana smith"), SECRET, algorithm="HS256")) is None
