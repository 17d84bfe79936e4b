"""The audit hash chain: intact chains verify; a changed, removed or reordered entry is named."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from xpipe.security._audit import GENESIS_HASH, AuditEntry, append, chain, entry_hash, verify


def _entries(n: int = 5) -> list[AuditEntry]:
    raw = [AuditEntry(seq=0, at=1_700_000_000.0 + i + 0.125, principal=f"user{i % 2}",
                      action="/xpipe.v1.PipelineService/SubmitPipeline", target=f"run-{i}",
                      outcome="ok" if i != 3 else "refused", stimulus_id=f"submit-{i}",
                      detail={"permission": "run:submit"} if i == 3 else {}) for i in range(n)]  # fmt: skip
    return chain(raw)


def test_chain_links_each_entry_to_the_previous_hash():
    entries = _entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert all(e.hash == entry_hash(e.prev_hash, e) for e in entries)
    assert verify(entries) is None


def test_append_continues_a_stored_chain_and_json_round_trips():
    entries = _entries(3)
    more = append(
        entries[-1], AuditEntry(seq=0, at=2.5, principal="ops", action="drain", target="w1", outcome="ok")
    )
    assert more.seq == 4 and more.prev_hash == entries[-1].hash
    reloaded = [AuditEntry.from_json(json.loads(json.dumps(e.to_json()))) for e in [*entries, more]]
    assert verify(reloaded) is None


@pytest.mark.parametrize("field", ["principal", "action", "target", "outcome", "stimulus_id", "at", "detail"])
def test_a_changed_field_is_detected_at_that_seq(field):
    entries = _entries()
    value = {"at": 1.0, "detail": {"permission": "none"}, "outcome": "failed"}.get(field, "mallory")
    entries[2] = dataclasses.replace(entries[2], **{field: value})
    problem = verify(entries)
    assert (problem.seq, problem.kind) == (3, "changed")
    assert "seq 3" in problem.message


def test_a_changed_entry_with_its_hash_recomputed_is_caught_by_the_next_entry():
    entries = _entries()
    forged = dataclasses.replace(entries[1], principal="mallory")
    entries[1] = dataclasses.replace(forged, hash=entry_hash(forged.prev_hash, forged))
    problem = verify(entries)
    assert (problem.seq, problem.kind) == (2, "changed")


def test_a_removed_entry_is_named():
    entries = _entries()
    del entries[2]
    problem = verify(entries)
    assert (problem.seq, problem.kind) == (3, "removed")
    assert "seq 3 removed" in problem.message


def test_removing_the_first_entry_is_detected():
    problem = verify(_entries()[1:])
    assert (problem.seq, problem.kind) == (1, "removed")


def test_removing_the_tail_needs_the_head_hash():
    entries = _entries()
    head = entries[-1].hash
    assert verify(entries[:-2]) is None  # the chain alone cannot tell
    problem = verify(entries[:-2], expected_head=head)
    assert (problem.seq, problem.kind) == (4, "removed")
    assert verify(entries, expected_head=head) is None


def test_two_swapped_entries_are_reordered():
    entries = _entries()
    entries[1], entries[2] = entries[2], entries[1]
    problem = verify(entries)
    assert (problem.seq, problem.kind) == (3, "reordered")
    assert "seq 3 found where seq 2 belongs" in problem.message


def test_verifying_a_tail_from_an_anchor():
    entries = _entries()
    assert verify(entries[2:], prev_hash=entries[1].hash, first_seq=3) is None
    problem = verify(entries[2:], prev_hash=entries[0].hash, first_seq=3)
    assert (problem.seq, problem.kind) == (3, "changed")


def test_bad_outcome_is_refused():
    with pytest.raises(ValueError, match="outcome 'maybe'"):
        AuditEntry(seq=1, at=0.0, principal="", action="a", target="t", outcome="maybe")
