"""Privacy: the PII decorators, redaction of shown data, and a pickle reader that runs no code.

``@comply_with_gdpr`` and ``@ensure_privacy_compliance`` mark a task or a pipeline builder
with the field names that hold personal data (``pii_fields`` of its :class:`Governance`
mark, copied into ``TaskSpec.pii_fields``). Wherever data is *shown* (task logs, the CLI's
results, the dashboard, the audit log) those fields' values are replaced by
:data:`REDACTED`. The value a program gets back through the SDK is the real one: the
program owns its data, and redaction is about what other people see.

The coordinator must never unpickle arbitrary data (unpickling runs code): :func:`safe_loads`
reads only pickles of plain builtin values, for ``forget_subject``.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from ._marks import mark

__all__ = [
    "DEFAULT_PII_FIELDS",
    "REDACTED",
    "NotInspectable",
    "comply_with_gdpr",
    "ensure_privacy_compliance",
    "pii_values",
    "plain_payload_value",
    "redact",
    "redact_text",
    "safe_loads",
]

#: What a redacted value is replaced by.
REDACTED = "[REDACTED]"

#: The fields a bare ``@comply_with_gdpr`` / ``@ensure_privacy_compliance`` redacts: the
#: common names of direct identifiers (GDPR Art. 4(1)). Matched case-insensitively.
DEFAULT_PII_FIELDS: tuple[str, ...] = (
    "name", "first_name", "last_name", "full_name", "email", "email_address", "phone", "phone_number",
    "address", "street", "postcode", "zip", "zip_code", "date_of_birth", "dob", "birth_date", "ssn",
    "national_id", "passport", "passport_number", "tax_id", "iban", "credit_card", "card_number", "ip",
    "ip_address", "username", "password",
)  # fmt: skip

F = TypeVar("F")


def _fold(fields: Iterable[str]) -> frozenset[str]:
    return frozenset(f.casefold() for f in fields)


def _check_pii(pii: Any, where: str) -> tuple[str, ...]:
    if isinstance(pii, str) or not isinstance(pii, Iterable):
        raise TypeError(f"{where}(pii=...) takes a list of field names, got {pii!r}")
    fields = tuple(pii)
    bad = [f for f in fields if not isinstance(f, str) or not f.strip()]
    if bad or not fields:
        raise ValueError(f"{where}(pii=...) needs non-empty field name strings, got {list(fields)!r}")
    return fields


def _privacy_decorator(where: str) -> Callable:
    @overload
    def decorator(target: F, /) -> F: ...
    @overload
    def decorator(*, pii: Iterable[str]) -> Callable[[F], F]: ...

    def decorator(target: Any = None, /, *, pii: Iterable[str] | None = None) -> Any:
        fields = DEFAULT_PII_FIELDS if pii is None else _check_pii(pii, where)
        if target is None:
            return lambda t: mark(t, pii_fields=fields)
        return mark(target, pii_fields=fields)

    decorator.__name__ = decorator.__qualname__ = where
    decorator.__doc__ = (
        f"Mark a task or pipeline builder as handling personal data: redact its PII fields.\n\n"
        f'Use bare (``@{where}``: :data:`DEFAULT_PII_FIELDS`) or as ``@{where}(pii=["email", ...])``.\n'
        "Its task logs, and its results as the CLI and dashboard show them, have those fields'\n"
        "values replaced by ``[REDACTED]``; the SDK still returns the real values to the program."
    )
    return decorator


comply_with_gdpr = _privacy_decorator("comply_with_gdpr")
ensure_privacy_compliance = _privacy_decorator("ensure_privacy_compliance")


# ---------------------------------------------------------------- redaction of values


def redact(value: Any, fields: Iterable[str]) -> Any:
    """A copy of ``value`` with every field named in ``fields`` (any case) replaced by :data:`REDACTED`.

    Recurses through mappings, lists, tuples, sets and records (dataclasses and named
    tuples, returned as the same type; other objects with a ``__dict__`` as a dict of their
    attributes, since they are only shown). Anything else is returned as it is.
    """
    folded = _fold(fields)
    if not folded:
        return value
    return _redact(value, folded, 0)


_MAX_DEPTH = 200


def _redact(value: Any, fields: frozenset[str], depth: int) -> Any:
    if depth > _MAX_DEPTH or isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and k.casefold() in fields else _redact(v, fields, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(
            REDACTED if name.casefold() in fields else _redact(v, fields, depth + 1)
            for name, v in zip(value._fields, value)
        ))  # fmt: skip
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, fields, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return value  # members of a set have no field names
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: REDACTED
            if f.name.casefold() in fields
            else _redact(getattr(value, f.name), fields, depth + 1)
            for f in dataclasses.fields(value)
            if f.init
        }
        try:
            return dataclasses.replace(value, **changes)
        except (TypeError, ValueError):  # a __post_init__ that checks types: show a dict instead
            return changes
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not callable(value):
        return {
            k: REDACTED if k.casefold() in fields else _redact(v, fields, depth + 1) for k, v in attrs.items()
        }
    return value


def pii_values(value: Any, fields: Iterable[str]) -> set[str]:
    """The string values (at least 3 characters) that ``fields`` hold anywhere in ``value``.

    A worker scrubs these from a marked task's log lines: a task that prints a customer's
    email without a ``email=`` prefix still has it redacted.
    """
    folded = _fold(fields)
    found: set[str] = set()
    if folded:
        _collect(value, folded, found, 0)
    return {v for v in found if len(v) >= 3}


def _collect(value: Any, fields: frozenset[str], found: set[str], depth: int) -> None:
    if depth > _MAX_DEPTH or isinstance(value, (str, bytes, int, float, bool, type(None))):
        return
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        items = zip(value._fields, value)
    elif isinstance(value, (list, tuple)):
        items = ((None, v) for v in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(getattr(value, "__dict__", None), dict) and not callable(value):
        items = vars(value).items()
    else:
        return
    for key, item in items:
        if isinstance(key, str) and key.casefold() in fields:
            if isinstance(item, str):
                found.add(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                found.add(str(item))
            else:
                _collect_strings(item, found, depth + 1)
        else:
            _collect(item, fields, found, depth + 1)


def _collect_strings(value: Any, found: set[str], depth: int) -> None:
    """Every string inside a PII field's value (a list of emails, say)."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _collect_strings(v, found, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _collect_strings(v, found, depth + 1)


# ---------------------------------------------------------------- redaction of text


def _text_pattern(fields: frozenset[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(f) for f in sorted(fields, key=len, reverse=True))
    # field=value, field: value, "field": "value", 'field': 'value' (the value up to a
    # separator, or the whole quoted string).
    return re.compile(
        rf"""(?P<key>["']?\b(?:{names})\b["']?\s*[:=]\s*)(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&}}\]\)]+)""",
        re.IGNORECASE,
    )


_patterns: dict[frozenset[str], re.Pattern[str]] = {}


def redact_text(text: str, fields: Iterable[str], values: Iterable[str] = ()) -> str:
    """``text`` (a log line) with PII removed: ``field=value`` / ``"field": "value"`` pairs of
    ``fields`` (any case) and every occurrence of ``values`` become :data:`REDACTED`."""
    folded = _fold(fields)
    if folded:
        pattern = _patterns.get(folded)
        if pattern is None:
            pattern = _patterns[folded] = _text_pattern(folded)
            if len(_patterns) > 256:
                _patterns.pop(next(iter(_patterns)))
        text = pattern.sub(_replace_value, text)
    for value in sorted(values, key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text


def _replace_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{quote}{REDACTED}{quote}"


# ---------------------------------------------------------------- reading pickles safely


class NotInspectable(Exception):
    """A stored value holds something other than plain builtin values; its message says what."""


#: The only globals a pickle of plain values may name (protocols 0-5 spell some builtins so).
_SAFE_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "complex"), ("__builtin__", "bytearray"),
    ("_codecs", "encode"),  # how protocols 0-2 spell bytes: a text codec call, no code of the pickle's
})  # fmt: skip


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise NotInspectable(f"it holds a {module}.{name}, not only plain builtin values")

    def persistent_load(self, pid: Any) -> Any:
        raise NotInspectable("it holds a persistent reference")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` only if it holds plain builtin values (dicts, lists, str, numbers...).

    No class is looked up except ``set``, ``frozenset``, ``complex`` and ``bytearray``, so no
    code of the pickle's choosing runs (no ``__reduce__``, no ``__setstate__``).

    Raises:
        NotInspectable: the pickle names anything else (a class, a function), or is malformed.
    """
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except NotInspectable:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle raises anything; it is reported, not run
        raise NotInspectable(f"it is not a readable pickle ({type(exc).__name__}: {exc})") from None


#: Largest payload :func:`plain_payload_value` decodes (scrubbing logs is best effort, not a cost).
PLAIN_PAYLOAD_MAX_BYTES = 4 << 20


def plain_payload_value(payload: Any, *, max_bytes: int = PLAIN_PAYLOAD_MAX_BYTES) -> Any:
    """The value of an inline JSON or pickled ``Payload``, read without running any code.

    Raises:
        NotInspectable: it travels by reference, is bigger than ``max_bytes``, is raw bytes,
            or holds more than plain builtin values.
    """
    import json

    import zstandard
    from xpipe._proto import common_pb2

    if payload.artifact_ref:
        raise NotInspectable("it travels by reference (an artifact file)")
    if payload.size_bytes > max_bytes or len(payload.data) > max_bytes:
        raise NotInspectable(f"it is {max(payload.size_bytes, len(payload.data))} bytes, over {max_bytes}")
    data = payload.data
    if payload.zstd:
        try:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(payload.size_bytes, 1))
        except zstandard.ZstdError as exc:
            raise NotInspectable(f"it does not decompress ({exc})") from None
    if payload.codec == common_pb2.CODEC_JSON:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise NotInspectable(f"it is not valid JSON ({exc})") from None
    if payload.codec == common_pb2.CODEC_PICKLE:
        return safe_loads(data)
    if not data:
        return None
    raise NotInspectable("it is raw bytes, not records")
