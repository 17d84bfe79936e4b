"""The audit log's hash chain: pure, so the store and ``xpipe audit --verify`` share it.

Each entry's hash is ``sha256(prev_hash + canonical(entry))``, where ``canonical`` is the
entry's fields (its own hash excluded, ``prev_hash`` included) as compact sorted JSON. An
entry changed in place no longer matches its hash; one recomputed to match breaks the next
entry's ``prev_hash``; a removed entry leaves a gap in ``seq``; a swapped pair breaks the
order. :func:`verify` names the first such problem by ``seq``. Removing entries from the
*end* leaves a valid shorter chain: the store keeps the head hash elsewhere and passes it as
``expected_head``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditProblem",
    "append",
    "canonical",
    "chain",
    "entry_hash",
    "verify",
]

#: The ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64
OUTCOMES = ("ok", "refused", "failed")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action.

    Attributes:
        seq: Position in the log, from 1, without gaps.
        at: Unix seconds when it happened.
        principal: Who did it (``""`` when unauthenticated).
        action: What was done: the RPC's method name or a data access (``result:read``).
        target: What it was done to (a run id, ``run/task``, a worker name).
        outcome: ``ok``, ``refused`` or ``failed``.
        stimulus_id: The state machine's stimulus id, tying the entry to a run's story.
        detail: Extra string fields (the refusal's missing permission, content hashes).
        prev_hash: The previous entry's hash (set by :func:`chain` / :func:`append`).
        hash: This entry's hash (set by :func:`chain` / :func:`append`).
    """

    seq: int
    at: float
    principal: str
    action: str
    target: str
    outcome: str
    stimulus_id: str = ""
    detail: Mapping[str, str] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"audit outcome {self.outcome!r}: expected one of {', '.join(OUTCOMES)}")
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    def to_json(self) -> dict[str, object]:
        """All fields, for the store and ``xpipe audit --json``."""
        return {**self._body(), "hash": self.hash}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AuditEntry:
        return cls(**data)  # type: ignore[arg-type]

    def _body(self) -> dict[str, object]:
        return {
            "seq": self.seq, "at": self.at, "principal": self.principal, "action": self.action,
            "target": self.target, "outcome": self.outcome, "stimulus_id": self.stimulus_id,
            "detail": dict(self.detail), "prev_hash": self.prev_hash,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """The first thing wrong with a chain.

    Attributes:
        seq: The entry where it shows (for ``removed``: the first missing seq).
        kind: ``changed``, ``removed`` or ``reordered``.
        message: One line for the operator.
    """

    seq: int
    kind: str
    message: str


def canonical(entry: AuditEntry) -> bytes:
    """The bytes an entry's hash covers: every field but ``hash``, as sorted compact JSON.

    ``at`` is serialized by ``repr`` (JSON floats round-trip exactly), so a stored and
    reloaded entry hashes the same.
    """
    return json.dumps(entry._body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """``sha256(prev_hash + canonical(entry))`` as hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(entry)).hexdigest()


def append(prev: AuditEntry | None, entry: AuditEntry) -> AuditEntry:
    """``entry`` linked after ``prev`` (None: the first): its seq, prev_hash and hash set."""
    prev_hash = prev.hash if prev is not None else GENESIS_HASH
    linked = replace(entry, seq=prev.seq + 1 if prev is not None else 1, prev_hash=prev_hash, hash="")
    return replace(linked, hash=entry_hash(prev_hash, linked))


def chain(entries: Iterable[AuditEntry], prev: AuditEntry | None = None) -> list[AuditEntry]:
    """Link ``entries`` in order after ``prev`` (None: from the start)."""
    out: list[AuditEntry] = []
    for entry in entries:
        prev = append(prev, entry)
        out.append(prev)
    return out


def verify(
    entries: Sequence[AuditEntry],
    *,
    prev_hash: str = GENESIS_HASH,
    first_seq: int = 1,
    expected_head: str | None = None,
) -> AuditProblem | None:
    """The first problem in ``entries``, or None if the chain is intact.

    Args:
        entries: In stored order.
        prev_hash: The hash before the first entry (to verify a tail of the log).
        first_seq: The seq the first entry must have.
        expected_head: The last entry's hash as recorded elsewhere; catches entries
            removed from the end, which the chain alone cannot.
    """
    seqs = {e.seq for e in entries}
    expected_seq = first_seq
    for entry in entries:
        if entry.seq != expected_seq:
            if entry.seq > expected_seq and expected_seq not in seqs:
                missing = (
                    f"{expected_seq}" if entry.seq == expected_seq + 1 else f"{expected_seq}-{entry.seq - 1}"
                )
                return AuditProblem(
                    expected_seq, "removed", f"audit entry seq {missing} removed (next found: {entry.seq})"
                )
            return AuditProblem(entry.seq, "reordered",
                                f"audit entry seq {entry.seq} found where seq {expected_seq} belongs")  # fmt: skip
        if entry.hash != entry_hash(entry.prev_hash, entry):
            return AuditProblem(
                entry.seq, "changed", f"audit entry seq {entry.seq} was changed (its hash does not match)"
            )
        if entry.prev_hash != prev_hash and entry.seq == first_seq:
            return AuditProblem(
                entry.seq, "changed", f"audit entry seq {entry.seq} does not follow the anchor hash"
            )
        if entry.prev_hash != prev_hash:
            # The entry itself is intact, so the one before it was rewritten (hash recomputed).
            return AuditProblem(entry.seq - 1, "changed",
                                f"audit entry seq {entry.seq - 1} was changed (seq {entry.seq} recorded another hash)")  # fmt: skip
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    if expected_head is not None and prev_hash != expected_head:
        return AuditProblem(expected_seq, "removed",
                            f"audit entries from seq {expected_seq} on removed (the head hash does not match)")  # fmt: skip
    return None
