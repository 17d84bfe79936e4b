"""JSON Web Tokens from an identity provider, checked with pyjwt.

Spec syntax (the value of ``--auth``)::

    jwt:hs256:/etc/xpipe/jwt.secret[,audience=xpipe][,issuer=https://idp.example][,leeway_s=30]
    jwt:rs256:/etc/xpipe/idp-public.pem[,audience=...][,issuer=...][,leeway_s=...]

Options follow the key path, comma-separated ``key=value``; ``audience`` defaults to
``xpipe``. Exactly one algorithm is accepted per authenticator, the one the spec names, so
a token cannot choose its own (the classic confusion: an HS256 token "signed" with the
RS256 public key is refused). ``exp``, ``aud`` and ``sub`` are required.

Claims: ``sub`` is the principal; ``roles``, ``permissions`` and ``namespaces`` (lists of
strings) grant what their names say; ``namespaces`` absent means all namespaces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import jwt

from ._errors import SecurityConfigError
from ._principal import Principal

__all__ = ["DEFAULT_AUDIENCE", "MIN_HS256_SECRET_BYTES", "JwtAuthenticator", "JwtSpec"]

logger = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "xpipe"
#: RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output.
MIN_HS256_SECRET_BYTES = 32
_ALGORITHMS = {"hs256": "HS256", "rs256": "RS256"}
_OPTIONS = {"audience", "issuer", "leeway_s"}
_REQUIRED_CLAIMS = ["exp", "aud", "sub"]


@dataclass(frozen=True, slots=True)
class JwtSpec:
    """A parsed ``jwt:`` spec (see the module docstring)."""

    algorithm: str
    key_path: Path
    audience: str = DEFAULT_AUDIENCE
    issuer: str | None = None
    leeway_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> JwtSpec:
        """Parse ``jwt:<alg>:<path>[,key=value...]``.

        Raises:
            SecurityConfigError: not a jwt spec, an unknown algorithm or option, a bad value.
        """
        scheme, _, rest = spec.partition(":")
        alg, _, rest = rest.partition(":")
        if scheme != "jwt" or not rest:
            raise SecurityConfigError(
                f"--auth {spec!r}: expected jwt:hs256:/path/secret or jwt:rs256:/path/public.pem"
            )
        if alg.lower() not in _ALGORITHMS:
            raise SecurityConfigError(
                f"--auth {spec!r}: unknown JWT algorithm {alg!r} (expected hs256 or rs256)"
            )
        path_text, *pairs = rest.split(",")
        options: dict[str, str] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if key not in _OPTIONS or not eq or not value:
                raise SecurityConfigError(f"--auth {spec!r}: bad option {pair!r} "
                                          f"(expected key=value with key in {', '.join(sorted(_OPTIONS))})")  # fmt: skip
            options[key] = value
        try:
            leeway_s = float(options.get("leeway_s", 0.0))
        except ValueError:
            leeway_s = -1.0
        if not 0 <= leeway_s <= 300:
            raise SecurityConfigError(f"--auth {spec!r}: leeway_s must be seconds from 0 to 300")
        return cls(algorithm=_ALGORITHMS[alg.lower()], key_path=Path(path_text),
                   audience=options.get("audience", DEFAULT_AUDIENCE), issuer=options.get("issuer"),
                   leeway_s=leeway_s)  # fmt: skip


def _load_key(spec: JwtSpec) -> object:
    try:
        raw = spec.key_path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(
            f"JWT key file {spec.key_path}: cannot read: {exc.strerror or exc}"
        ) from None
    if spec.algorithm == "HS256":
        secret = raw.rstrip(b"\r\n")
        if len(secret) < MIN_HS256_SECRET_BYTES:
            raise SecurityConfigError(f"JWT secret {spec.key_path}: {len(secret)} bytes; HS256 needs at least "
                                      f"{MIN_HS256_SECRET_BYTES}")  # fmt: skip
        return secret
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(raw)
    except ValueError as exc:
        raise SecurityConfigError(f"JWT public key {spec.key_path}: not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SecurityConfigError(
            f"JWT public key {spec.key_path}: RS256 needs an RSA key, got {type(key).__name__}"
        )
    return key


class JwtAuthenticator:
    """Verifies JWTs with one algorithm and key; returns the principal of a good one.

    Args:
        spec: A ``jwt:`` spec string or a parsed :class:`JwtSpec`.

    Raises:
        SecurityConfigError: a bad spec or key file (at construction, so a coordinator fails
            at start-up, not at the first request).
    """

    def __init__(self, spec: str | JwtSpec) -> None:
        self.spec = spec if isinstance(spec, JwtSpec) else JwtSpec.parse(spec)
        self._key = _load_key(self.spec)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid token, or None (expired, wrong audience or key, ...).

        The reason for a refusal is logged at debug level, never returned to the caller.
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.spec.algorithm],
                audience=self.spec.audience,
                issuer=self.spec.issuer,
                leeway=self.spec.leeway_s,
                options={"require": _REQUIRED_CLAIMS + (["iss"] if self.spec.issuer else [])},
            )
        except jwt.InvalidTokenError as exc:
            logger.debug("JWT refused: %s", exc)
            return None
        try:
            return Principal.build(
                claims["sub"],
                roles=_claim_list(claims, "roles"),
                permissions=_claim_list(claims, "permissions"),
                namespaces=_claim_list(claims, "namespaces") if "namespaces" in claims else None,
                source="jwt",
            )
        except (ValueError, TypeError) as exc:
            logger.debug("JWT refused: malformed claims: %s", exc)
            return None


def _claim_list(claims: dict[str, object], key: str) -> list[str]:
    value = claims.get(key, [])
    if not isinstance(value, list):
        raise TypeError(f"claim {key} must be a list")
    return value
