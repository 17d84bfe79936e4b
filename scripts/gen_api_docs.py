"""Render the proto reference in ``docs/api.md`` from ``proto/xpipe/v1/*.proto``.

The protos are the API for every language, so their comments are the one place a field's
meaning, unit and limit are written; this script turns them into Markdown so the page
cannot drift from them. ``docs/api.md`` keeps its hand-written prose (errors, limits, the
dashboard's JSON API, the Python SDK): only the text between the two markers below is
rewritten. ``--check`` fails when that text is stale, ``--missing`` lists every service,
RPC, message, field, oneof and enum value that has no leading comment (what buf's COMMENTS
rules ask for). ``make proto`` runs it after regenerating the stubs.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
API_MD = ROOT / "docs" / "api.md"
BEGIN = (
    "<!-- generated from proto/: begin "
    "(scripts/gen_api_docs.py; edit the .proto comments, then `make proto`) -->"
)
END = "<!-- generated from proto/: end -->"
PACKAGE = "xpipe.v1"

# descriptor.proto field numbers, as SourceCodeInfo paths use them.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _SERVICE_METHOD = 2, 2

_SCALARS = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32",
    8: "bool", 9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32", 16: "sfixed64",
    17: "sint32", 18: "sint64",
}
_TYPE_MESSAGE, _TYPE_ENUM, _LABEL_REPEATED = 11, 14, 3


@dataclass(frozen=True)
class Element:
    """One documented element: what it is, its full name, and its leading comment."""

    kind: str
    name: str
    comment: str


def build_descriptor_set(proto_dir: Path = PROTO_DIR):
    """Compile every .proto under ``proto_dir/xpipe/v1`` into a FileDescriptorSet with comments."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc  # a dev dependency, imported only here

    protos = sorted(str(p.relative_to(proto_dir)) for p in (proto_dir / "xpipe" / "v1").glob("*.proto"))
    args = ["grpc_tools.protoc", f"-I{proto_dir}", "--include_source_info"]
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        rc = protoc.main([*args, f"-I{include}", f"--descriptor_set_out={out}", *protos])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


def _comments(file) -> dict[tuple[int, ...], str]:
    """{SourceCodeInfo path: leading comment} of one file; only leading comments count, as for buf."""
    locations = file.source_code_info.location
    return {tuple(loc.path): text for loc in locations if (text := _clean(loc.leading_comments))}


def _clean(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def elements(fds) -> Iterator[Element]:
    """Every service, RPC, message, field, oneof, enum and enum value, with its comment."""
    for file in fds.file:
        docs = _comments(file)
        for i, svc in enumerate(file.service):
            yield Element("service", svc.name, docs.get((_FILE_SERVICE, i), ""))
            for j, m in enumerate(svc.method):
                comment = docs.get((_FILE_SERVICE, i, _SERVICE_METHOD, j), "")
                yield Element("rpc", f"{svc.name}.{m.name}", comment)
        for i, msg in enumerate(file.message_type):
            yield from _message_elements(msg, msg.name, (_FILE_MESSAGE, i), docs)
        for i, enum in enumerate(file.enum_type):
            yield from _enum_elements(enum, enum.name, (_FILE_ENUM, i), docs)


def _message_elements(msg, name: str, path: tuple[int, ...], docs) -> Iterator[Element]:
    if msg.options.map_entry:
        return  # map<k, v>: protoc's synthetic entry message, not written in the .proto
    yield Element("message", name, docs.get(path, ""))
    for j, field in enumerate(msg.field):
        yield Element("field", f"{name}.{field.name}", docs.get(path + (_MSG_FIELD, j), ""))
    for j, oneof in enumerate(msg.oneof_decl):
        if not oneof.name.startswith("_"):  # `optional` fields get a synthetic oneof
            yield Element("oneof", f"{name}.{oneof.name}", docs.get(path + (_MSG_ONEOF, j), ""))
    for j, nested in enumerate(msg.nested_type):
        yield from _message_elements(nested, f"{name}.{nested.name}", path + (_MSG_NESTED, j), docs)
    for j, enum in enumerate(msg.enum_type):
        yield from _enum_elements(enum, f"{name}.{enum.name}", path + (_MSG_ENUM, j), docs)


def _enum_elements(enum, name: str, path: tuple[int, ...], docs) -> Iterator[Element]:
    yield Element("enum", name, docs.get(path, ""))
    for j, value in enumerate(enum.value):
        yield Element("enum value", f"{name}.{value.name}", docs.get(path + (_ENUM_VALUE, j), ""))


def missing_comments(fds) -> list[str]:
    """``kind name`` of every element without a leading comment."""
    return [f"{e.kind} {e.name}" for e in elements(fds) if not e.comment]


# ---- rendering ----

# Clients read PipelineService and the messages it shares first; the rest follow by name.
_FIRST = ("xpipe/v1/pipeline.proto", "xpipe/v1/common.proto", "xpipe/v1/worker.proto")
_INTRO = """\
## Reference (generated from the protos)

Every service, RPC, message, field and enum value of `xpipe.v1`, with the comment it has
in `proto/xpipe/v1/`. Times are unix seconds and durations seconds unless a name says
otherwise (`*_s`, `*_bytes`). A field left unset reads as its zero value.
"""


def _anchor(kind: str, name: str) -> str:
    """GitHub's slug of the heading ``#### kind `name` ``: lower case, punctuation dropped."""
    return re.sub(r"[^a-z0-9 _-]", "", f"{kind} {name}".lower()).replace(" ", "-")


def _md(text: str) -> str:
    """A comment as Markdown: outside `code`, <...> (not HTML) and * (not emphasis) escaped."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts)


def _cell(text: str) -> str:
    return _md(text).replace("|", "\\|") or " "


def _file_order(file) -> tuple[int, str]:
    return (_FIRST.index(file.name) if file.name in _FIRST else len(_FIRST), file.name)


class _Renderer:
    """Markdown for one FileDescriptorSet; knows every type of the package, to link to it."""

    def __init__(self, fds) -> None:
        self.fds = fds
        self.kinds: dict[str, str] = {}  # short name ("RunInfo", "Outer.Inner") -> "message" | "enum"
        self.maps: dict[str, tuple] = {}  # full name of a map entry -> (key field, value field)
        for file in fds.file:
            self._index(file.message_type, "")
            for enum in file.enum_type:
                self.kinds[enum.name] = "enum"

    def _index(self, msgs, prefix: str) -> None:
        for msg in msgs:
            name = f"{prefix}{msg.name}"
            if msg.options.map_entry:
                self.maps[f"{PACKAGE}.{name}"] = (msg.field[0], msg.field[1])
                continue
            self.kinds[name] = "message"
            self._index(msg.nested_type, name + ".")
            for enum in msg.enum_type:
                self.kinds[f"{name}.{enum.name}"] = "enum"

    def link(self, type_name: str) -> str:
        """A Markdown link to a message or enum of ours; other types as code."""
        full = type_name.lstrip(".")
        if not full.startswith(PACKAGE + "."):
            return f"`{full}`"
        short = full[len(PACKAGE) + 1 :]
        return f"[`{short}`](#{_anchor(self.kinds[short], short)})"

    def field_type(self, field) -> str:
        if field.type in (_TYPE_MESSAGE, _TYPE_ENUM):
            entry = self.maps.get(field.type_name.lstrip("."))
            if entry is not None:
                return f"map&lt;{self.field_type(entry[0])}, {self.field_type(entry[1])}&gt;"
            base = self.link(field.type_name)
        else:
            base = f"`{_SCALARS[field.type]}`"
        if field.label == _LABEL_REPEATED:
            return f"repeated {base}"
        return f"optional {base}" if field.proto3_optional else base

    def render(self) -> str:
        out = [_INTRO]
        for file in sorted(self.fds.file, key=_file_order):
            docs = _comments(file)
            out += [f"### `{file.name}`", ""]
            header = docs.get((12,), "")  # the comment before `syntax`
            if header:
                out += [_md(header), ""]
            for i, svc in enumerate(file.service):
                out += self.service(svc, (_FILE_SERVICE, i), docs)
            for i, msg in enumerate(file.message_type):
                out += self.message(msg, msg.name, (_FILE_MESSAGE, i), docs)
            for i, enum in enumerate(file.enum_type):
                out += self.enum(enum, enum.name, (_FILE_ENUM, i), docs)
        return "\n".join(out).rstrip() + "\n"

    def service(self, svc, path, docs) -> list[str]:
        out = [f"#### service `{svc.name}`", "", _md(docs.get(path, "")), ""]
        out += ["| rpc | request | response | does |", "| --- | --- | --- | --- |"]
        for j, m in enumerate(svc.method):
            req = ("stream " if m.client_streaming else "") + self.link(m.input_type)
            resp = ("stream " if m.server_streaming else "") + self.link(m.output_type)
            does = _cell(docs.get(path + (_SERVICE_METHOD, j), ""))
            out.append(f"| `{m.name}` | {req} | {resp} | {does} |")
        return out + [""]

    def message(self, msg, name: str, path, docs) -> list[str]:
        if msg.options.map_entry:
            return []
        out = [f"#### message `{name}`", "", _md(docs.get(path, "")), ""]
        oneofs = {j: o.name for j, o in enumerate(msg.oneof_decl) if not o.name.startswith("_")}
        if msg.field:
            out += ["| # | field | type | meaning |", "| --- | --- | --- | --- |"]
            for j, field in enumerate(msg.field):
                comment = docs.get(path + (_MSG_FIELD, j), "")
                if field.HasField("oneof_index") and field.oneof_index in oneofs:
                    comment = f"(one of `{oneofs[field.oneof_index]}`) {comment}"
                kind = self.field_type(field)
                out.append(f"| {field.number} | `{field.name}` | {kind} | {_cell(comment)} |")
            out.append("")
        for j, oneof in sorted(oneofs.items()):
            out += [f"`{oneof}` (oneof): {_md(docs.get(path + (_MSG_ONEOF, j), ''))}", ""]
        for j, nested in enumerate(msg.nested_type):
            out += self.message(nested, f"{name}.{nested.name}", path + (_MSG_NESTED, j), docs)
        for j, enum in enumerate(msg.enum_type):
            out += self.enum(enum, f"{name}.{enum.name}", path + (_MSG_ENUM, j), docs)
        return out

    def enum(self, enum, name: str, path, docs) -> list[str]:
        out = [f"#### enum `{name}`", "", _md(docs.get(path, "")), ""]
        out += ["| # | value | meaning |", "| --- | --- | --- |"]
        for j, value in enumerate(enum.value):
            meaning = _cell(docs.get(path + (_ENUM_VALUE, j), ""))
            out.append(f"| {value.number} | `{value.name}` | {meaning} |")
        return out + [""]


def render(fds) -> str:
    """The generated reference: per file its services, messages and enums, linked by anchors."""
    return _Renderer(fds).render()


def splice(page: str, reference: str) -> str:
    """``page`` with the text between the markers replaced by ``reference``."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{API_MD.relative_to(ROOT)} lacks the markers {BEGIN!r} ... {END!r}")
    return page[: start + len(BEGIN)] + "\n\n" + reference + "\n" + page[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    group.add_argument("--missing", action="store_true", help="list elements without a leading comment")
    opts = parser.parse_args()
    fds = build_descriptor_set()
    if opts.missing:
        missing = missing_comments(fds)
        print("\n".join(missing) or "every element has a comment")
        return 1 if missing else 0
    page = API_MD.read_text()
    fresh = splice(page, render(fds))
    if opts.check:
        if fresh != page:
            print("docs/api.md is stale: its reference differs from proto/xpipe/v1; run `make proto`",
                  file=sys.stderr)
            return 1
        return 0
    if fresh != page:
        API_MD.write_text(fresh)
        print(f"wrote {API_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
