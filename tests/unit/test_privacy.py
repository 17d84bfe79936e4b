"""Privacy: the PII decorators, redaction of values and text, and the pickle reader that runs no code."""

from __future__ import annotations

import collections
import dataclasses
import json
import pickle
from typing import NamedTuple

import pytest
from xpipe import Pipeline, Task, pipeline, task
from xpipe._codec import encode
from xpipe.security import DEFAULT_PII_FIELDS, REDACTED, comply_with_gdpr, ensure_privacy_compliance, redact
from xpipe.security._marks import governance_of
from xpipe.security._privacy import NotInspectable, pii_values, plain_payload_value, redact_text, safe_loads
from xpipe.worker._tasklogs import TaskLogBuffer, pii_values_of

from tests import helpers_tasks as ht


@dataclasses.dataclass
class Person:
    Name: str
    age: int


@dataclasses.dataclass(frozen=True)
class Account:
    owner: Person
    email: str


class Row(NamedTuple):
    email: str
    score: int


class Plain:
    def __init__(self):
        self.email = "p@x.org"
        self.city = "Oslo"


def test_redact_is_recursive_case_insensitive_and_leaves_the_input_alone():
    value = {
        "EMAIL": "a@x.org",
        "rows": [{"name": "Ann", "id": 1}, ({"Email": "b@x.org"},)],
        "account": Account(Person("Bo", 40), "c@x.org"),
        "row": Row("d@x.org", 3),
        "other": Plain(),
        "tags": {"email"},
        "count": 3,
    }
    out = redact(value, ["email", "NAME"])
    assert out["EMAIL"] == REDACTED
    assert out["rows"] == [{"name": REDACTED, "id": 1}, ({"Email": REDACTED},)]
    assert out["account"] == Account(Person(REDACTED, 40), REDACTED)  # records keep their type
    assert out["row"] == Row(REDACTED, 3)
    assert out["other"] == {"email": REDACTED, "city": "Oslo"}  # other objects are shown as dicts
    assert out["tags"] == {"email"} and out["count"] == 3
    assert value["EMAIL"] == "a@x.org" and value["rows"][0]["name"] == "Ann"  # a copy


def test_redact_passes_non_dict_values_and_empty_field_lists_through():
    assert redact("email=a@x.org", ["email"]) == "email=a@x.org"  # a string has no fields
    assert redact(42, ["email"]) == 42 and redact(None, ["email"]) is None
    assert redact([1, "two", b"3"], ["email"]) == [1, "two", b"3"]
    data = {"email": "a@x.org"}
    assert redact(data, []) is data


def test_redact_text_scrubs_pairs_quoted_pairs_and_seen_values():
    line = 'user EMAIL=a@x.org, {"name": "Ann Lee", "id": 7} \'email\': \'b@x.org\' name: Bo; mailed a@x.org and Cy'
    out = redact_text(line, ["email", "name"], ["Cy", "a@x.org"])
    assert "a@x.org" not in out and "Ann Lee" not in out and "b@x.org" not in out and "Cy" not in out
    assert f"EMAIL={REDACTED}," in out and f'"name": "{REDACTED}"' in out and f"'email': '{REDACTED}'" in out
    assert f"name: {REDACTED};" in out and '"id": 7' in out
    assert redact_text("username=zed", ["name"]) == "username=zed"  # whole field names only


def test_pii_values_collects_strings_of_the_fields_anywhere():
    value = ({"rows": [{"Email": "a@x.org", "name": ["Ann", "Al"]}, Row("b@x.org", 1)]}, {"phone": 5551234})
    assert pii_values(value, ["email", "name", "phone"]) == {
        "a@x.org",
        "Ann",
        "b@x.org",
        "5551234",
    }  # "Al": too short


def test_decorators_work_bare_and_with_pii_on_functions_tasks_and_pipeline_builders():
    @comply_with_gdpr
    def f():
        return 1

    assert governance_of(f).pii_fields == DEFAULT_PII_FIELDS
    t = ensure_privacy_compliance(pii=["email", "iban"])(Task("t", ht.noop))
    assert governance_of(t).pii_fields == ("email", "iban")

    @pipeline("seed")
    @comply_with_gdpr(pii=["customer_ref"])
    def built():
        @task("a")
        @ensure_privacy_compliance
        def a():
            return 1

        return [a]

    spec = built.to_proto()
    assert set(spec.tasks[0].pii_fields) == {
        *DEFAULT_PII_FIELDS,
        "customer_ref",
    }  # the task's and the pipeline's
    assert isinstance(built, Pipeline)


@pytest.mark.parametrize("bad", ["email", [], [""], [3], None.__class__])
def test_decorators_refuse_bad_pii_lists(bad):
    with pytest.raises((TypeError, ValueError), match=r"comply_with_gdpr\(pii=\.\.\.\)"):
        comply_with_gdpr(pii=bad)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_loads_reads_plain_values_in_every_protocol(protocol):
    value = [
        {
            "a": (1, 2.5, None, True),
            "b": {1, 2},
            "c": frozenset({3}),
            "d": b"x",
            "e": bytearray(b"y"),
            "f": 1j,
        }
    ]
    assert safe_loads(pickle.dumps(value, protocol=protocol)) == value


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("value", [Boom(), collections.OrderedDict(a=1), Person("a", 1), ht.noop])
def test_safe_loads_refuses_anything_that_names_a_class_or_function(value, capsys):
    with pytest.raises(NotInspectable, match="not only plain builtin values"):
        safe_loads(pickle.dumps(value))
    assert "this must never run" not in capsys.readouterr().out


def test_safe_loads_refuses_garbage_with_a_clear_reason():
    with pytest.raises(NotInspectable, match="not a readable pickle"):
        safe_loads(b"\x80\x05not a pickle")


def test_plain_payload_value_reads_json_and_pickle_and_refuses_the_rest():
    rows = [{"email": "a@x.org"}] * 2000  # big enough to be zstd-compressed
    assert plain_payload_value(encode(rows)) == rows
    assert plain_payload_value(encode(rows, "json")) == rows
    with pytest.raises(NotInspectable, match="raw bytes"):
        plain_payload_value(encode(b"abc", "raw"))
    with pytest.raises(NotInspectable, match="over 10"):
        plain_payload_value(encode("x" * 100), max_bytes=10)
    ref = encode(1)
    ref.artifact_ref = "file:///tmp/x"
    with pytest.raises(NotInspectable, match="by reference"):
        plain_payload_value(ref)


def test_worker_log_buffer_scrubs_only_marked_attempts():
    buf = TaskLogBuffer()
    marked, plain = ("r", "marked", 1), ("r", "plain", 1)
    args = encode(((), {"customer": {"email": "dana@x.org"}})).SerializeToString()
    buf.protect(marked, ("email",), pii_values_of(("email",), args, b"", b"\xff not a payload"))
    buf.add(marked, 1, b"email=dana@x.org\nhello dana@x.org\n", 0.0)
    buf.add(plain, 1, b"email=dana@x.org\n", 0.0)
    buf.end(marked)
    buf.protect(marked, ("email",), frozenset({"out@x.org"}))  # the result's values, added after the end
    buf.add(marked, 2, b"sent out@x.org\n", 0.0)
    batch = buf.take()
    texts = {(e.attempt.task, e.stream): e.data for e in batch.entries if e.data}
    assert texts[("marked", 1)] == f"email={REDACTED}\nhello {REDACTED}\n".encode()
    assert texts[("marked", 2)] == f"sent {REDACTED}\n".encode()
    assert texts[("plain", 1)] == b"email=dana@x.org\n"
    assert [e.attempt.task for e in batch.entries if e.final] == ["marked"]


def test_default_pii_fields_are_lower_case_and_unique():
    assert len(set(DEFAULT_PII_FIELDS)) == len(DEFAULT_PII_FIELDS)
    assert all(f == f.lower() for f in DEFAULT_PII_FIELDS)
    assert json.dumps(DEFAULT_PII_FIELDS)  # documented in docs/security.md


def test_worker_scrubs_a_marked_attempts_error_message_traceback_and_output_tail():
    from xpipe._proto import common_pb2

    buf = TaskLogBuffer()
    key = ("r", "t", 1)
    buf.protect(key, ("email",), frozenset({"dana@x.org"}))
    error = common_pb2.TaskError(message="bad customer dana@x.org", traceback="ValueError: email=dana@x.org")
    error.output.stdout_tail = b"checking email=dana@x.org\n"
    buf.scrub_error(key, error)
    assert error.message == f"bad customer {REDACTED}" and error.traceback == f"ValueError: email={REDACTED}"
    assert error.output.stdout_tail == f"checking email={REDACTED}\n".encode()
    other = common_pb2.TaskError(message="bad customer dana@x.org")
    buf.scrub_error(("r", "unmarked", 1), other)
    assert other.message == "bad customer dana@x.org"


def test_xpipe_run_shows_outputs_redacted_by_each_tasks_marks():
    from xpipe._cli import _shown_outputs

    p = Pipeline("shown")
    p.add_tasks([ensure_privacy_compliance(pii=["email"])(Task("marked", ht.noop)), Task("plain", ht.noop)])
    outputs = {"marked": {"email": "a@x.org", "n": 1}, "plain": {"email": "a@x.org"}}
    assert _shown_outputs(p, outputs) == {"marked": {"email": REDACTED, "n": 1}, "plain": {"email": "a@x.org"}}
    assert outputs["marked"]["email"] == "a@x.org"  # the program's value is untouched
