"""Tasks for the privacy and governance tests (tests/integration/test_governance.py).

Imported by workers with ``--import tests.helpers_privacy``, so the handler is advertised.
"""

from __future__ import annotations

import json
import os
from typing import Any

from xpipe import handler

CUSTOMERS = [
    {"id": 1, "email": "dana@example.org", "name": "Dana Scully"},
    {"id": 2, "email": "fox@example.org", "name": "Fox Mulder"},
]


def customers() -> list[dict]:
    """A pickled list of dicts (plain builtin values)."""
    return [dict(row) for row in CUSTOMERS]


def talk_about(rows: list[dict]) -> int:
    """Log PII three ways: a field=value pair, a JSON-ish pair, and a bare value seen in the input."""
    for row in rows:
        print(f"processing email={row['email']} id={row['id']}")
        print(json.dumps({"name": row["name"], "ok": True}))
        print(f"sent a letter to {row['email']}")
    return len(rows)


def big_customers(padding_bytes: int) -> dict:
    """A result big enough to travel as an artifact file."""
    return {"rows": [dict(row) for row in CUSTOMERS], "padding": os.urandom(padding_bytes)}


@handler("privacy_echo")
def privacy_echo(rows: Any) -> Any:
    """Handler (JSON in, JSON out): returns its input, so the stored result is JSON."""
    print(f"echo {len(rows)} rows, first email={rows[0]['email'] if rows else '-'}")
    return rows


class Opaque:
    """A result the coordinator must not unpickle (a class, not a plain value)."""

    def __init__(self, email: str):
        self.email = email

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.email == self.email


def opaque(email: str) -> Opaque:
    return Opaque(email)


def fail_about(rows: list[dict]) -> None:
    """Print a subject's email, then fail naming it (error message and output tail hold it)."""
    print(f"checking email={rows[0]['email']}")
    raise ValueError(f"bad customer {rows[0]['email']}")
