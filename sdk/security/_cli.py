"""``xpipe certs``, ``xpipe tokens`` and ``xpipe keys``: make the files security runs on.

Registered into the ``xpipe`` command by :func:`register`. Each subcommand prints one JSON
object on stdout (the paths written, or the new token, which is shown this once only). Bad
input raises :class:`SecurityConfigError`, which ``xpipe`` turns into one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._errors import SecurityConfigError
from ._limits import CERT_ROLES, DEFAULT_CERT_DAYS, KEY_TYPES, MAX_CERT_DAYS

__all__ = ["register"]


def _print(data: dict[str, Any]) -> int:
    print(json.dumps(data, sort_keys=True))
    return 0


def _days(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SecurityConfigError(
            f"--days {text!r}: expected a whole number of days from 1 to {MAX_CERT_DAYS}"
        ) from None


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


# Every `xpipe` command builds this parser; the modules behind it (cryptography alone is
# ~80 ms) are imported only by the command that runs.


def cmd_certs_init(opts: argparse.Namespace) -> int:
    from ._certs import init_ca

    files = init_ca(opts.dir, key_type=opts.key_type)
    return _print({"ca_cert": str(files.cert), "ca_key": str(files.key)})


def cmd_certs_issue(opts: argparse.Namespace) -> int:
    from ._certs import issue_cert

    files = issue_cert(opts.dir, name=opts.name, role=opts.role, sans=opts.san or (), days=_days(opts.days),
                       key_type=opts.key_type)  # fmt: skip
    return _print({"name": opts.name, "role": opts.role, "cert": str(files.cert), "key": str(files.key)})


def cmd_tokens_create(opts: argparse.Namespace) -> int:
    from ._rbac import BUILTIN_ROLES, Policy
    from ._tokens import create_token

    known = set(BUILTIN_ROLES) | (set(Policy.load(opts.policy).roles) if opts.policy else set())
    token = create_token(opts.file, opts.principal, roles=_csv(opts.roles), permissions=_csv(opts.permissions),
                         namespaces=opts.namespace or None, known_roles=known)  # fmt: skip
    return _print({"principal": opts.principal, "token": token})


def cmd_keys_create(opts: argparse.Namespace) -> int:
    from ._keys import create_keyring

    return _print({"file": opts.file, "active_key": create_keyring(opts.file)})


def cmd_keys_rotate(opts: argparse.Namespace) -> int:
    from ._keys import rotate_keyring

    return _print({"file": opts.file, "active_key": rotate_keyring(opts.file)})


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``certs``, ``tokens`` and ``keys`` to the ``xpipe`` command's subparsers.

    Each leaf sets ``fn`` (returning the exit status), like the other subcommands.
    """
    certs = sub.add_parser(
        "certs", help="a private CA and certificates for coordinators, workers and clients"
    )
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="create a CA (ca.pem, ca.key) in DIR")
    init.add_argument("--dir", required=True, help="directory for the CA files (created 0700 if missing)")
    init.add_argument(
        "--key-type", default="ec", help=f"one of {', '.join(KEY_TYPES)} (ec: P-256; rsa: 3072 bits)"
    )
    init.set_defaults(fn=cmd_certs_init)
    issue = certs_sub.add_parser("issue", help="issue NAME.pem and NAME.key signed by the CA in DIR")
    issue.add_argument("--dir", required=True, help="the directory holding the CA")
    issue.add_argument(
        "--name", required=True, help="the certificate's name (CN), e.g. the host or worker name"
    )
    issue.add_argument("--role", required=True, help=f"one of {', '.join(CERT_ROLES)}")
    issue.add_argument("--san", action="append", metavar="HOST",
                       help="a host name or IP the coordinator is reached at (repeat; default localhost, 127.0.0.1)")  # fmt: skip
    issue.add_argument(
        "--days", default=str(DEFAULT_CERT_DAYS), help=f"validity (default {DEFAULT_CERT_DAYS})"
    )
    issue.add_argument("--key-type", default="ec", help=f"one of {', '.join(KEY_TYPES)}")
    issue.set_defaults(fn=cmd_certs_issue)

    tokens = sub.add_parser("tokens", help="bearer tokens for --auth tokens:FILE")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="append a token's hash to FILE and print the token once")
    create.add_argument("--file", required=True, help="the tokens file (created 0600 if missing)")
    create.add_argument("--principal", required=True, help="whom the token authenticates")
    create.add_argument(
        "--roles",
        default="",
        help="comma-separated roles: viewer, submitter, operator, admin, worker, or a --policy role (default: none)",
    )
    create.add_argument("--permissions", default="", help="comma-separated extra permissions (default: none)")
    create.add_argument(
        "--namespace", action="append", metavar="NS", help="restrict to this namespace (repeat)"
    )
    create.add_argument(
        "--policy", default=None, help="a policy file whose roles are also accepted in --roles"
    )
    create.set_defaults(fn=cmd_tokens_create)

    keys = sub.add_parser("keys", help="keyrings for encryption at rest (AES-256-GCM)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = keys_sub.add_parser("create", help="write a new keyring with one active key")
    kcreate.add_argument("--file", required=True, help="the keyring file (created 0600; never overwritten)")
    kcreate.set_defaults(fn=cmd_keys_create)
    rotate = keys_sub.add_parser("rotate", help="add a new active key; old keys stay for reading old data")
    rotate.add_argument("--file", required=True, help="the keyring file")
    rotate.set_defaults(fn=cmd_keys_rotate)
