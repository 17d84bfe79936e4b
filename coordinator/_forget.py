"""Forgetting a data subject: erase the records and log lines that hold ``field == value``.

``GovernanceService.ForgetSubject`` (``pm.forget_subject(field, value)``) pages through the
stored results of finished runs. A result that is the subject's record (a mapping whose
``field``, any case, equals ``value``) is deleted; a result that holds such records in
lists, tuples or mappings is rewritten without them, in the store or in its artifact file.
Then every task log line holding ``value`` is deleted.

The coordinator never runs code of the data's choosing: JSON results are parsed, pickled
ones are read by :func:`~xpipe.security._privacy.safe_loads`, which refuses anything but
plain builtin values. A result that holds ``value``'s bytes but cannot be read so (a pickled
class instance, raw bytes, a missing artifact) is reported as not inspected, with why; so is
every unfinished run (forget again once it finished), and every task whose submitted
arguments hold the subject (a run's spec is kept as submitted: it is history; retention
deletes it with the run). A value's bytes are looked for before it is decoded, so results
that cannot hold the subject cost no decoding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
from typing import TYPE_CHECKING, Any

import zstandard
from xpipe.security._errors import DecryptionError
from xpipe._codec import ARTIFACT_SEALED_SUFFIX, MAX_DECODED_BYTES, read_artifact, resolve_artifact_ref
from xpipe._domain import TERMINAL_RUN_STATES
from xpipe._limits import MAX_NAME_CHARS
from xpipe._proto import common_pb2 as pb
from xpipe._proto import governance_pb2
from xpipe.errors import SerializationError
from xpipe.security._privacy import NotInspectable, plain_payload_value, safe_loads

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["MAX_SUBJECT_VALUE_CHARS", "check_subject", "forget_subject", "without_subject"]

log = logging.getLogger(__name__)

#: Longest subject value accepted (an id, an email; not a document).
MAX_SUBJECT_VALUE_CHARS = 4096
#: Results read from the store per page.
_PAGE = 200

_zc = zstandard.ZstdCompressor(level=3)
_zd = zstandard.ZstdDecompressor()
#: Why a task's submitted arguments that hold the subject are listed, not erased.
_KEPT_ARGUMENTS = (
    "its submitted arguments hold the subject; they are kept as submitted (a run's spec is "
    "history, never rewritten): delete the run (retention) to erase them"
)
#: Marks "this whole value is the subject's record" in :func:`without_subject`.
_GONE = object()


def check_subject(field: str, value: str) -> str:
    """Why ``(field, value)`` cannot name a subject ("" if it can)."""
    if not field.strip() or len(field) > MAX_NAME_CHARS:
        return f"ForgetSubjectRequest.field must have 1 to {MAX_NAME_CHARS} characters, got {len(field)}"
    if not value or len(value) > MAX_SUBJECT_VALUE_CHARS:
        return f"ForgetSubjectRequest.value must have 1 to {MAX_SUBJECT_VALUE_CHARS} characters, got {len(value)}"
    return ""


def _matches(item: Any, field: str, value: str) -> bool:
    if not isinstance(item, dict):
        return False
    for key, got in item.items():
        if isinstance(key, str) and key.casefold() == field:
            if isinstance(got, str) and got == value:
                return True
            if isinstance(got, (int, float)) and not isinstance(got, bool) and str(got) == value:
                return True
    return False


def without_subject(data: Any, field: str, value: str) -> tuple[Any, int]:
    """``data`` without the records whose ``field`` (any case) equals ``value``; (new data, records removed).

    The new data is ``_GONE`` when ``data`` itself is such a record. Records are removed from
    lists, tuples and sets' containers and from mappings (the key that held one goes).
    Pure; ``data`` is not changed.
    """
    return _without(data, field.casefold(), value, 0)


def _without(data: Any, field: str, value: str, depth: int) -> tuple[Any, int]:
    if depth > 200:
        return data, 0
    if _matches(data, field, value):
        return _GONE, 1
    if isinstance(data, dict):
        out, removed = {}, 0
        for k, v in data.items():
            new, n = _without(v, field, value, depth + 1)
            removed += n
            if new is not _GONE:
                out[k] = new
        return (out, removed) if removed else (data, 0)
    if isinstance(data, (list, tuple)):
        items, removed = [], 0
        for v in data:
            new, n = _without(v, field, value, depth + 1)
            removed += n
            if new is not _GONE:
                items.append(new)
        return (type(data)(items), removed) if removed else (data, 0)
    return data, 0


def _needles(value: str) -> list[bytes] | None:
    """Byte strings one of which a payload holding ``value`` must contain (None: cannot tell)."""
    try:
        float(value)
        return None  # numbers are stored in binary by pickle: inspect everything
    except ValueError:
        pass
    return list(dict.fromkeys([value.encode(), json.dumps(value)[1:-1].encode()]))


class _Forgetting:
    """One ForgetSubject call's work and its answer."""

    def __init__(self, c: Coordinator, field: str, value: str):
        self.c = c
        self.field = field
        self.value = value
        self.needles = _needles(value)
        self.out = governance_pb2.ForgetSubjectResponse()
        self.changes: list[tuple[str, str, pb.Payload | None]] = []
        self.artifact_writes: list[tuple[str, bytes]] = []

    def skip(self, run_id: str, task: str, reason: str) -> None:
        self.out.not_inspected.append(governance_pb2.NotInspected(run_id=run_id, task=task, reason=reason))

    def raw_bytes(self, payload: pb.Payload) -> bytes:
        data = payload.data
        if payload.artifact_ref:
            data = read_artifact(payload.artifact_ref, artifact_root=self.c.config.artifact_dir or None,
                                 what="a stored result")  # fmt: skip
        if payload.zstd:
            if payload.size_bytes > MAX_DECODED_BYTES:
                raise SerializationError(f"it declares {payload.size_bytes} bytes, over {MAX_DECODED_BYTES}")
            data = _zd.decompress(data, max_output_size=max(payload.size_bytes, 1))
        return data

    def inspect(self, run_id: str, task: str, payload: pb.Payload) -> None:
        try:
            data = self.raw_bytes(payload)
        except (SerializationError, zstandard.ZstdError, OSError) as exc:
            self.skip(run_id, task, f"its stored bytes cannot be read: {exc}")
            return
        if self.needles is not None and not any(n in data for n in self.needles):
            return  # the subject's value is nowhere in it
        try:
            if payload.codec == pb.CODEC_JSON:
                value = json.loads(data)
            elif payload.codec == pb.CODEC_PICKLE:
                value = safe_loads(data)
            else:
                self.skip(run_id, task, "it is raw bytes (a command's output or CODEC_RAW), not records")
                return
        except NotInspectable as exc:
            self.skip(run_id, task, f"not inspected: {exc}")
            return
        except ValueError as exc:
            self.skip(run_id, task, f"not inspected: it is not valid JSON ({exc})")
            return
        new, removed = without_subject(value, self.field, self.value)
        if not removed:
            if self.needles is not None:
                log.debug(
                    "result %s/%s holds the value outside a %r field; left as it is", run_id, task, self.field
                )
            return
        result = governance_pb2.ForgottenResult(run_id=run_id, task=task, records_removed=removed)
        if new is _GONE:
            result.result_deleted = True
            self.changes.append((run_id, task, None))
            if payload.artifact_ref:
                self.artifact_writes.append((payload.artifact_ref, b""))
        else:
            self.changes.append((run_id, task, self.rewritten(payload, new)))
        self.out.results.append(result)
        self.out.records_removed += removed

    def inspect_spec(self, run_id: str, spec: pb.PipelineSpec) -> None:
        """Report tasks whose submitted arguments hold the subject: a run's spec is not rewritten."""
        for task in spec.tasks:
            args = task.args
            if not args.data:
                continue
            try:
                data = self.raw_bytes(args)
            except (SerializationError, zstandard.ZstdError, OSError):
                continue
            if self.needles is not None and not any(n in data for n in self.needles):
                continue
            try:
                held = without_subject(plain_payload_value(args), self.field, self.value)[1] > 0
            except NotInspectable:
                held = self.needles is not None  # its bytes hold the value, its records cannot be read
            if held:
                self.skip(run_id, task.name, _KEPT_ARGUMENTS)

    def rewritten(self, payload: pb.Payload, value: Any) -> pb.Payload:
        if payload.codec == pb.CODEC_JSON:
            data = json.dumps(value, separators=(",", ":")).encode()
        else:  # plain builtin values only (safe_loads read them): pickling them back runs nothing
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        new = pb.Payload(codec=payload.codec, size_bytes=len(data), zstd=payload.zstd)
        stored = _zc.compress(data) if payload.zstd else data
        if payload.artifact_ref:
            new.artifact_ref = payload.artifact_ref
            self.artifact_writes.append((payload.artifact_ref, stored))
        else:
            new.data = stored
        return new

    def write_artifacts(self) -> None:
        """Rewrite (or, for b"", delete) artifact files, each atomically."""
        root = self.c.config.artifact_dir or None
        for ref, data in self.artifact_writes:
            path = resolve_artifact_ref(ref, root, what="a stored result")
            if not data:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                continue
            if path.endswith(ARTIFACT_SEALED_SUFFIX):  # sealed at rest: the new bytes are sealed too
                from xpipe.security._atrest import at_rest, artifact_aad

                crypt = at_rest()
                if crypt is None:
                    raise DecryptionError(f"cannot rewrite sealed artifact {ref}: no --encryption-key-file")
                relative = os.path.relpath(path, os.path.realpath(root or ""))
                data = crypt.seal(data, artifact_aad(relative))
            tmp = f"{path}.forget.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)


async def forget_subject(c: Coordinator, field: str, value: str) -> governance_pb2.ForgetSubjectResponse:
    """Erase what is stored about the subject ``field == value``; what was erased (see the module docs)."""
    work = _Forgetting(c, field.casefold(), value)
    for run_id, run in list(c.engine.state.runs.items()):
        if run.state not in TERMINAL_RUN_STATES:
            work.skip(
                run_id,
                "",
                "the run is unfinished: its results are not inspected; forget again once it finished",
            )
    after = ("", "")
    while True:
        page = await c.store.finished_results(after, _PAGE)
        if not page:
            break
        await asyncio.to_thread(lambda p=page: [work.inspect(r, t, payload) for r, t, payload in p])
        after = page[-1][:2]
    after_run = ""
    while True:
        specs = await c.store.finished_specs(after_run, _PAGE // 4)
        if not specs:
            break
        await asyncio.to_thread(lambda p=specs: [work.inspect_spec(r, spec) for r, spec in p])
        after_run = specs[-1][0]
    touched_runs = {r for r, _, _ in work.changes}
    tasks = {(r, t) for r, t, _ in work.changes}
    if work.changes:
        c.engine.drop_finished(sorted(touched_runs))  # reads go to the store, which is rewritten next
        await c.store.replace_results(work.changes)
        await asyncio.to_thread(work.write_artifacts)
    lines, log_tasks = await c.task_logs.forget(value)
    work.out.log_lines_removed = lines
    touched_runs |= {r for r, _ in log_tasks}
    tasks |= log_tasks
    work.out.runs_touched = len(touched_runs)
    work.out.tasks_touched = len(tasks)
    log.info("forgot a subject (%s): %d records in %d results, %d log lines, %d values not inspected",
             field, work.out.records_removed, len(work.out.results), lines, len(work.out.not_inspected))  # fmt: skip
    return work.out
