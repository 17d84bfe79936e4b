"""The CA and certificates ``xpipe certs`` writes, and reading an identity back."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from xpipe.security._certs import CertIdentity, identity_from_certificate, init_ca, issue_cert
from xpipe.security._errors import SecurityConfigError


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    init_ca(d)
    return d


def _load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_self_signed_p256_ten_years_with_a_private_key(ca_dir):
    ca = _load(ca_dir / "ca.pem")
    assert ca.issuer == ca.subject
    assert (
        isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert 3649 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 3651
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    ca.public_key().verify(ca.signature, ca.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def test_rsa_ca_is_3072_bits(tmp_path):
    init_ca(tmp_path, key_type="rsa")
    key = _load(tmp_path / "ca.pem").public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072


def test_coordinator_cert_has_server_auth_and_default_sans(ca_dir):
    files = issue_cert(ca_dir, name="coord-a", role="coordinator")
    cert = _load(files.cert)
    assert cert.issuer == _load(ca_dir / "ca.pem").subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "coord-a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "coordinator"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["xpipe://coordinator/coord-a"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert 364 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 366


def test_explicit_sans_and_days(ca_dir):
    cert = _load(issue_cert(ca_dir, name="coord-b", role="coordinator", sans=["xp.example.test", "10.0.0.7"],
                            days=30).cert)  # fmt: skip
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["xp.example.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31


def test_worker_cert_is_client_auth_and_its_identity_reads_back_from_pem_and_der(ca_dir):
    cert = _load(issue_cert(ca_dir, name="w-7", role="worker").cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    identity = identity_from_certificate(cert.public_bytes(serialization.Encoding.PEM))
    assert identity == CertIdentity(role="worker", name="w-7")
    assert identity_from_certificate(cert.public_bytes(serialization.Encoding.DER)) == identity
    principal = identity.to_principal()
    assert (principal.name, principal.roles, principal.source) == ("w-7", frozenset({"worker"}), "cert")
    assert CertIdentity("client", "dana").to_principal().roles == frozenset()  # roles come from the policy


def _self_signed(subject: list[x509.NameAttribute]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(subject)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def test_identity_falls_back_to_subject_and_is_none_for_foreign_certs():
    assert identity_from_certificate(_self_signed([
        x509.NameAttribute(NameOID.COMMON_NAME, "w9"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "worker"),
    ])) == CertIdentity("worker", "w9")  # fmt: skip
    assert (
        identity_from_certificate(_self_signed([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")]))
        is None
    )
    with pytest.raises(SecurityConfigError, match="not an X.509 certificate"):
        identity_from_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_nothing_is_overwritten(ca_dir):
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(SecurityConfigError, match="ca.pem already exists; refusing to overwrite"):
        init_ca(ca_dir)
    assert (ca_dir / "ca.key").read_bytes() == before
    issue_cert(ca_dir, name="dup", role="client")
    with pytest.raises(SecurityConfigError, match="dup.pem already exists"):
        issue_cert(ca_dir, name="dup", role="client")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"name": "x", "role": "boss"},
            r"--role 'boss': unknown role \(expected one of: coordinator, worker, client\)",
        ),
        ({"name": "../etc/x", "role": "worker"}, r"--name '../etc/x'"),
        ({"name": "ca", "role": "worker"}, r"--name 'ca'"),
        (
            {"name": "x", "role": "worker", "days": 0},
            r"--days 0: expected a whole number of days from 1 to 3650",
        ),
        ({"name": "x", "role": "worker", "days": 4000}, r"--days 4000"),
        ({"name": "x", "role": "worker", "sans": ["h"]}, r"--san is for coordinator certificates"),
        ({"name": "x", "role": "coordinator", "sans": ["bad host!"]}, r"--san 'bad host!': not a host name"),
        ({"name": "x", "role": "worker", "key_type": "dsa"}, r"unknown key type 'dsa'"),
    ],
)
def test_bad_issue_input_is_refused_and_writes_nothing(ca_dir, kwargs, match):
    before = sorted(p.name for p in ca_dir.iterdir())
    with pytest.raises(SecurityConfigError, match=match):
        issue_cert(ca_dir, **kwargs)
    assert sorted(p.name for p in ca_dir.iterdir()) == before


def test_a_cert_may_not_outlive_its_ca(ca_dir):
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)
    with pytest.raises(SecurityConfigError, match="would outlive the CA"):
        issue_cert(ca_dir, name="late", role="worker", days=3000, now=late)


def test_missing_ca_and_unusable_dirs(tmp_path):
    with pytest.raises(SecurityConfigError, match="no CA there"):
        issue_cert(tmp_path, name="x", role="worker")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(SecurityConfigError, match="--dir .*file/ca: cannot create"):
        init_ca(a_file / "ca")
    with pytest.raises(SecurityConfigError, match="not a directory"):
        issue_cert(a_file, name="x", role="worker")
