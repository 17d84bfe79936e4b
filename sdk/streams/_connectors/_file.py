"""``file:///path.jsonl``: a JSON-lines file on the worker, one partition, as a source or a sink.

Sink: each record is one line, its value bytes then ``\\n``, appended with one ``os.write``
per write on an ``O_APPEND`` descriptor (unbuffered, so the bytes are in the file, not fsynced,
when ``write`` returns). A value holding ``\\n`` would split into two records: it is refused.
The directory must exist; the file is created.

Source: reads complete lines from the file and follows lines appended later (like
``tail -f``, checking every :data:`TAIL_POLL_S`) until stopped; a line still being written
(no ``\\n`` yet) waits for its end. A record's ``offset`` is the byte position just after its
line and its ``seq`` the line's number counting from 0. ``commit`` keeps the position in a
sidecar file ``<path>.<group>.offset`` (written to a temporary file, then renamed), so a
restarted source of the group continues after the last committed line. A missing file is
waited for (a producer may create it later); a path that cannot be read is a
:class:`~xpipe.DataStreamError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataStreamError
from .._uri import StreamURI
from ._base import Connector, Message, OutRecord, Sink, Source

__all__ = ["FileConnector", "LAG_EXACT_BYTES", "READ_CHUNK_BYTES", "TAIL_POLL_S", "offset_file"]

log = logging.getLogger(__name__)

#: How often a source with nothing new looks at its file again.
TAIL_POLL_S = 0.05
#: Bytes read from the file at a time.
READ_CHUNK_BYTES = 1 << 20
#: ``lag()`` counts lines exactly when at most this many bytes follow the committed position;
#: beyond it, it estimates from the average line length of the next this-many bytes.
LAG_EXACT_BYTES = 1 << 20


def offset_file(path: str | Path, group: str) -> Path:
    """Where a group's committed position in ``path`` is kept."""
    return Path(f"{path}.{group}.offset")


def _unreadable(uri: StreamURI, exc: OSError) -> DataStreamError:
    return DataStreamError(f"{uri}: cannot read {exc.filename or uri.name}: {exc.strerror or exc}")


class FileSource(Source):
    """Reads (and follows) the lines of one file, committing positions to a sidecar file."""

    def __init__(self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None):
        if partitions is not None and list(partitions) not in ([0], []):
            raise DataStreamError(f"{uri}: a file has one partition (0); asked for partitions {list(partitions)}")
        if not group or "/" in group or "\0" in group:
            raise DataStreamError(f"{uri}: group {group!r} cannot name a file: expected a non-empty name without '/'")
        self.uri = uri
        self.group = group
        self.path = Path(uri.name)
        self.sidecar = offset_file(self.path, group)
        self._owned = partitions is None or bool(list(partitions))
        self._position = 0  # byte position of the next line to read
        self._line = 0  # its number
        self._committed = (0, 0)
        self._file = None

    async def start(self) -> None:
        try:
            text = self.sidecar.read_text()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise _unreadable(self.uri, exc) from exc
        if text:
            try:
                saved = json.loads(text)
                self._committed = (int(saved["position"]), int(saved["line"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataStreamError(f"{self.uri}: offset file {self.sidecar} is corrupt ({exc}); remove it to start over") from None
        self._position, self._line = self._committed
        self._open()

    def _open(self) -> bool:
        """Open the file if it exists now; False while it does not."""
        if self._file is not None:
            return True
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open while the source runs
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _unreadable(self.uri, exc) from exc
        return True

    def _read(self, max_records: int) -> list[Message]:
        if not self._open():
            return []
        assert self._file is not None
        size = os.fstat(self._file.fileno()).st_size
        if size < self._position:
            raise DataStreamError(
                f"{self.uri}: the file has {size} bytes, less than the position {self._position} already read; "
                f"it was truncated or replaced (remove {self.sidecar} to read it from the start)"
            )
        out: list[Message] = []
        while len(out) < max_records:
            self._file.seek(self._position)
            chunk = self._file.read(READ_CHUNK_BYTES)
            end = chunk.rfind(b"\n")
            if end < 0:
                if len(chunk) < READ_CHUNK_BYTES:  # nothing, or a line still being written: wait
                    break
                chunk = self._long_line()  # one line longer than a chunk
                if not chunk.endswith(b"\n"):
                    break
                end = len(chunk) - 1
            position = self._position
            for line in chunk[:end].split(b"\n"):
                position += len(line) + 1
                out.append(Message(line, None, 0, position, self._line, None))
                self._line += 1
                self._position = position
                if len(out) >= max_records:
                    break
            if len(chunk) < READ_CHUNK_BYTES:
                break
        return out

    def _long_line(self) -> bytes:
        assert self._file is not None
        self._file.seek(self._position)
        return self._file.readline()

    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        if not self._owned or max_records <= 0:
            return []
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            out = await asyncio.to_thread(self._read, max_records)
            remaining_s = deadline - time.monotonic()
            if out or remaining_s <= 0:
                return out
            await asyncio.sleep(min(TAIL_POLL_S, remaining_s))  # no portable file-change event: poll, like tail -f

    async def commit(self, last: Mapping[int, Message]) -> None:
        message = last.get(0)
        if message is None:
            return
        self._committed = (int(message.offset), message.seq + 1)
        data = json.dumps({"position": self._committed[0], "line": self._committed[1]}).encode()
        await asyncio.to_thread(self._save, data)

    def _save(self, data: bytes) -> None:
        temp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        try:
            temp.write_bytes(data)
            os.replace(temp, self.sidecar)
        except OSError as exc:
            raise DataStreamError(f"{self.uri}: cannot save the committed position to {self.sidecar}: {exc.strerror or exc}") from exc

    async def lag(self) -> int | None:
        return await asyncio.to_thread(self._lag)

    def _lag(self) -> int | None:
        """Lines after the committed position: exact up to LAG_EXACT_BYTES, else estimated."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(self._committed[0])
                head = f.read(LAG_EXACT_BYTES)
        except FileNotFoundError:
            return 0
        except OSError:
            log.warning("%s: lag unknown: cannot read %s", self.uri, self.path, exc_info=True)
            return None
        lines = head.count(b"\n")
        rest = size - self._committed[0]
        if rest <= len(head) or lines == 0:
            return lines
        return round(rest / ((head.rfind(b"\n") + 1) / lines))  # by the average of the complete lines read

    async def stop(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


class FileSink(Sink):
    """Appends one line per record to a file; the directory must exist."""

    def __init__(self, uri: StreamURI):
        self.uri = uri
        self.path = Path(uri.name)
        self._fd: int | None = None

    async def start(self) -> None:
        if not self.path.parent.is_dir():
            raise DataStreamError(f"{self.uri}: directory {self.path.parent} does not exist; create it first")
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataStreamError(f"{self.uri}: cannot open {self.path} for appending: {exc.strerror or exc}") from exc

    async def write(self, records: Sequence[OutRecord]) -> None:
        for i, record in enumerate(records):
            if b"\n" in record.value:
                raise DataStreamError(
                    f"{self.uri}: records[{i}] holds a newline, which would split it into two lines; nothing was written"
                )
        if self._fd is None:
            raise DataStreamError(f"{self.uri}: write before start (or after stop)")
        data = b"".join(r.value + b"\n" for r in records)
        await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise DataStreamError(f"{self.uri}: cannot append to {self.path}: {exc.strerror or exc}") from exc

    async def stop(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class FileConnector(Connector):
    """The ``file`` scheme: JSON-lines files on the worker's disk, one partition each."""

    scheme = "file"

    def source(self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None, codec: str = "json") -> Source:
        return FileSource(uri, group=group, partitions=partitions)

    def sink(self, uri: StreamURI, *, codec: str = "json") -> Sink:
        return FileSink(uri)

    async def ensure(self, uri: StreamURI, *, partitions: int, timeout_s: float = 10.0) -> int:
        return 1

    async def partitions(self, uri: StreamURI, *, timeout_s: float = 10.0) -> int:
        return 1

    async def check(self, uri: StreamURI, *, timeout_s: float = 5.0) -> None:
        """The directory must exist, and the file, if there, must be a readable regular file."""
        path = Path(uri.name)
        if not path.parent.is_dir():
            raise DataStreamError(f"{uri}: directory {path.parent} does not exist")
        if path.exists() and (not path.is_file() or not os.access(path, os.R_OK)):
            raise DataStreamError(f"{uri}: {path} is not a readable file")
