"""A private certificate authority for a cluster, and the identity a certificate carries.

``xpipe certs init`` makes the CA; ``xpipe certs issue`` signs one certificate per
coordinator, worker or client. The role and name live in the subject (``CN=name, OU=role``)
and in a SAN URI ``xpipe://<role>/<name>``; :func:`identity_from_certificate` reads them back
from what gRPC's ``auth_context()`` gives a server (``x509_pem_cert``), so under mTLS a
worker's certificate is its credential.

Files in DIR: ``ca.pem`` / ``ca.key`` and ``<name>.pem`` / ``<name>.key``. Keys are written
0600 and nothing is ever overwritten: an existing file is an error, since replacing a CA key
silently would orphan every certificate it signed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._errors import SecurityConfigError
from ._files import write_private
from ._limits import CA_DAYS, CERT_ROLES, DEFAULT_CERT_DAYS, DEFAULT_SANS, KEY_TYPES, MAX_CERT_DAYS
from ._principal import Principal

__all__ = [
    "CA_DAYS",
    "CERT_ROLES",
    "DEFAULT_CERT_DAYS",
    "DEFAULT_SANS",
    "KEY_TYPES",
    "MAX_CERT_DAYS",
    "CertIdentity",
    "IssuedFiles",
    "identity_from_certificate",
    "init_ca",
    "issue_cert",
]

#: The SAN URI scheme that carries ``xpipe://<role>/<name>``.
URI_SCHEME = "xpipe"
_RSA_BITS = 3072
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CA_CERT, _CA_KEY = "ca.pem", "ca.key"


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """The (role, name) a certificate was issued for."""

    role: str
    name: str

    def to_principal(self) -> Principal:
        """The principal of a peer that presented this certificate.

        A worker certificate carries the RBAC role ``worker``. Client and coordinator
        certificates only name a principal: its roles come from the policy's
        ``[principals.<name>]``, so a certificate alone never grants more than connecting.
        """
        return Principal.build(self.name, roles=["worker"] if self.role == "worker" else [], source="cert")


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """Paths written by :func:`init_ca` or :func:`issue_cert`."""

    cert: Path
    key: Path


def _new_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    raise SecurityConfigError(f"unknown key type {key_type!r} (expected one of: {', '.join(KEY_TYPES)})")


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _check_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise SecurityConfigError(f"--dir {directory}: not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SecurityConfigError(f"--dir {directory}: not writable")


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise SecurityConfigError(f"{path} already exists; refusing to overwrite it")


def init_ca(directory: str | Path, *, key_type: str = "ec", common_name: str = "xpipe CA",
            now: dt.datetime | None = None) -> IssuedFiles:  # fmt: skip
    """Create a self-signed CA valid for :data:`CA_DAYS` days in ``directory``.

    Raises:
        SecurityConfigError: the directory is missing or not writable, the CA exists, or
            ``key_type`` is unknown.
    """
    directory = Path(directory)
    if not directory.exists():
        try:
            directory.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise SecurityConfigError(f"--dir {directory}: cannot create: {exc.strerror or exc}") from None
    _check_dir(directory)
    cert_path, key_path = directory / _CA_CERT, directory / _CA_KEY
    _refuse_existing(cert_path, key_path)
    key = _new_key(key_type)
    now = now or dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ca")])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return IssuedFiles(cert=cert_path, key=key_path)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.*-]{0,252})", host):
        raise SecurityConfigError(f"--san {host!r}: not a host name or IP address")
    return x509.DNSName(host)


def issue_cert(
    directory: str | Path,
    *,
    name: str,
    role: str,
    sans: Sequence[str] = (),
    days: int = DEFAULT_CERT_DAYS,
    key_type: str = "ec",
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Sign a leaf certificate for ``name`` in ``role`` with the CA in ``directory``.

    Coordinator certificates get serverAuth and the host SANs (``sans``, default
    :data:`DEFAULT_SANS`); worker and client certificates get clientAuth. Every certificate
    carries the SAN URI ``xpipe://<role>/<name>``.

    Raises:
        SecurityConfigError: a bad name, role, SAN or ``days``; no CA in ``directory``; or
            ``<name>.pem``/``<name>.key`` already exists.
    """
    directory = Path(directory)
    if role not in CERT_ROLES:
        raise SecurityConfigError(f"--role {role!r}: unknown role (expected one of: {', '.join(CERT_ROLES)})")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in ("ca",):
        raise SecurityConfigError(f"--name {name!r}: expected 1-64 of A-Z a-z 0-9 . _ - starting with a letter or "
                                  "digit, and not 'ca'")  # fmt: skip
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_CERT_DAYS:
        raise SecurityConfigError(
            f"--days {days!r}: expected a whole number of days from 1 to {MAX_CERT_DAYS}"
        )
    if sans and role != "coordinator":
        raise SecurityConfigError(
            f"--san is for coordinator certificates (servers); a {role} certificate has none"
        )
    _check_dir(directory)
    ca_cert_path, ca_key_path = directory / _CA_CERT, directory / _CA_KEY
    if not ca_cert_path.is_file() or not ca_key_path.is_file():
        raise SecurityConfigError(
            f"--dir {directory}: no CA there ({_CA_CERT}, {_CA_KEY}); run `xpipe certs init` first"
        )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _refuse_existing(cert_path, key_path)
    host_sans = [_san(h) for h in (sans or (DEFAULT_SANS if role == "coordinator" else ()))]
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecurityConfigError(f"--dir {directory}: cannot load the CA: {exc}") from None
    now = now or dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        raise SecurityConfigError(f"--days {days}: the certificate would outlive the CA, which expires "
                                  f"{ca_cert.not_valid_after_utc:%Y-%m-%d}")  # fmt: skip
    key = _new_key(key_type)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "coordinator" else ExtendedKeyUsageOID.CLIENT_AUTH
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [*host_sans, x509.UniformResourceIdentifier(f"{URI_SCHEME}://{role}/{name}")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return IssuedFiles(cert=cert_path, key=key_path)


def identity_from_certificate(data: bytes) -> CertIdentity | None:
    """The (role, name) of a peer certificate, PEM or DER, or None if it carries none.

    The SAN URI ``xpipe://role/name`` wins; else the subject's ``OU`` (role) and ``CN``
    (name). Only call this with a certificate the TLS handshake already verified against
    the CA: this reads an identity, it does not check a signature.

    Raises:
        SecurityConfigError: ``data`` is not a certificate.
    """
    try:
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(data))  # fmt: skip
    except ValueError as exc:
        raise SecurityConfigError(f"not an X.509 certificate: {exc}") from None
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    prefix = f"{URI_SCHEME}://"
    for uri in uris:
        if uri.startswith(prefix):
            role, _, name = uri[len(prefix) :].partition("/")
            if role in CERT_ROLES and _NAME.fullmatch(name):
                return CertIdentity(role=role, name=name)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if cns and ous and ous[0].value in CERT_ROLES and _NAME.fullmatch(str(cns[0].value)):
        return CertIdentity(role=str(ous[0].value), name=str(cns[0].value))
    return None
