"""The file:// connector on real files: write, read, commit, restart, tailing, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from xpipe.errors import DataStreamError
from xpipe.streams._connectors import OutRecord, connector_for
from xpipe.streams._connectors._file import READ_CHUNK_BYTES, offset_file
from xpipe.streams._uri import parse_uri

files = connector_for("file:///x.jsonl")


def uri_of(path) -> object:
    return parse_uri(f"file://{path}")


async def write(uri, values: list[bytes]) -> None:
    sink = files.sink(uri)
    await sink.start()
    try:
        await sink.write([OutRecord(v) for v in values])
    finally:
        await sink.stop()


async def read_all(source, want: int, timeout_s: float = 5.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += await source.fetch(want - len(got), 0.5)
    return got


def test_sink_appends_lines_and_source_reads_them_with_positions(tmp_path):
    path = tmp_path / "out.jsonl"
    uri = uri_of(path)
    values = [json.dumps({"i": i}).encode() for i in range(10)]

    async def main():
        await write(uri, values[:4])
        await write(uri, values[4:])  # a second sink appends
        source = files.source(uri, group="g", partitions=None)
        await source.start()
        got = await source.fetch(100, 0)
        await source.stop()
        return got

    got = asyncio.run(main())
    assert path.read_bytes() == b"".join(v + b"\n" for v in values)
    assert [m.value for m in got] == values
    assert [m.seq for m in got] == list(range(10))
    assert [m.offset for m in got] == [sum(len(v) + 1 for v in values[: i + 1]) for i in range(10)]
    assert {m.partition for m in got} == {0} and all(m.key is None for m in got)
    assert asyncio.run(files.partitions(uri)) == 1 and asyncio.run(files.ensure(uri, partitions=4)) == 1


def test_commit_survives_restart_and_lag_counts_lines_after_it(tmp_path):
    uri = uri_of(tmp_path / "in.jsonl")

    async def main():
        await write(uri, [b"%d" % i for i in range(100)])
        first = files.source(uri, group="g", partitions=[0])
        await first.start()
        got = await read_all(first, 100)
        assert await first.lag() == 100
        await first.commit({0: got[49]})
        lag = await first.lag()
        await first.stop()
        again = files.source(uri, group="g", partitions=None)
        await again.start()
        rest = await read_all(again, 50)
        other = files.source(uri, group="other", partitions=None)
        await other.start()
        other_first = (await other.fetch(1, 0))[0]
        await other.stop(), await again.stop()
        return lag, rest, other_first

    lag, rest, other_first = asyncio.run(main())
    assert lag == 50
    assert [m.value for m in rest] == [b"%d" % i for i in range(50, 100)]
    assert rest[0].seq == 50
    assert json.loads(offset_file(tmp_path / "in.jsonl", "g").read_text())["line"] == 50
    assert other_first.value == b"0"  # another group starts at the beginning


def test_lag_is_estimated_past_a_megabyte(tmp_path):
    uri = uri_of(tmp_path / "big.jsonl")
    line = b"x" * 99  # 100 bytes with its newline

    async def main():
        await write(uri, [line] * 30_000)  # 3 MB
        source = files.source(uri, group="g", partitions=None)
        await source.start()
        lag = await source.lag()
        await source.stop()
        return lag

    assert asyncio.run(main()) == 30_000  # equal lines: the estimate is exact


def test_source_follows_appended_lines_and_waits_for_a_missing_file(tmp_path):
    path = tmp_path / "later.jsonl"
    uri = uri_of(path)

    async def main():
        source = files.source(uri, group="g", partitions=None)
        await source.start()
        started = time.monotonic()
        assert await source.fetch(10, 0.2) == []  # no file yet: waited, nothing
        waited_s = time.monotonic() - started
        await write(uri, [b"one"])
        first = await read_all(source, 1)
        poll = asyncio.ensure_future(source.fetch(10, 5.0))
        done, _ = await asyncio.wait([poll], timeout=0.2)
        assert not done, "fetch answered with nothing new in the file"
        with open(path, "ab") as f:  # another writer, half a line first: not a record yet
            f.write(b"tw")
            f.flush()
            done, _ = await asyncio.wait([poll], timeout=0.2)
            assert not done, "a line without its newline was read"
            f.write(b"o\n")
        second = await poll
        await source.stop()
        return waited_s, first, second

    waited_s, first, second = asyncio.run(main())
    assert waited_s >= 0.19
    assert [m.value for m in first] == [b"one"] and [m.value for m in second] == [b"two"]
    assert second[0].seq == 1


def test_a_line_longer_than_a_read_chunk(tmp_path):
    uri = uri_of(tmp_path / "long.jsonl")
    long = b"y" * (READ_CHUNK_BYTES + 10)

    async def main():
        await write(uri, [long, b"short"])
        source = files.source(uri, group="g", partitions=None)
        await source.start()
        got = await read_all(source, 2)
        await source.stop()
        return got

    assert [m.value for m in asyncio.run(main())] == [long, b"short"]


def test_bad_input_is_refused_naming_the_problem(tmp_path):
    path = tmp_path / "ok.jsonl"
    uri = uri_of(path)
    with pytest.raises(DataStreamError, match=r"records\[1\] holds a newline.*nothing was written"):
        asyncio.run(write(uri, [b"fine", b"two\nlines"]))
    assert path.read_bytes() == b""
    missing = uri_of(tmp_path / "no-such-dir" / "out.jsonl")
    with pytest.raises(DataStreamError, match=f"directory {tmp_path / 'no-such-dir'} does not exist"):
        asyncio.run(write(missing, [b"x"]))
    with pytest.raises(DataStreamError, match="does not exist"):
        asyncio.run(files.check(missing))
    with pytest.raises(DataStreamError, match=r"one partition \(0\); asked for partitions \[1\]"):
        files.source(uri, group="g", partitions=[1])
    with pytest.raises(DataStreamError, match="group 'a/b' cannot name a file"):
        files.source(uri, group="a/b", partitions=None)


def test_unreadable_truncated_and_corrupt_files_are_errors(tmp_path):
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(DataStreamError, match="cannot read .*folder.jsonl: Is a directory"):
        asyncio.run(files.source(uri_of(folder), group="g", partitions=None).start())
    with pytest.raises(DataStreamError, match="not a readable file"):
        asyncio.run(files.check(uri_of(folder)))
    if os.geteuid() != 0:  # root reads any file
        secret = tmp_path / "secret.jsonl"
        secret.write_bytes(b"x\n")
        secret.chmod(0o000)
        with pytest.raises(DataStreamError, match="cannot read .*secret.jsonl: Permission denied"):
            asyncio.run(files.source(uri_of(secret), group="g", partitions=None).start())

    path = tmp_path / "shrinks.jsonl"
    uri = uri_of(path)

    async def truncated():
        await write(uri, [b"aaaa", b"bbbb"])
        source = files.source(uri, group="g", partitions=None)
        await source.start()
        try:
            await source.fetch(10, 0)
            path.write_bytes(b"c\n")
            await source.fetch(10, 0)
        finally:
            await source.stop()

    with pytest.raises(DataStreamError, match="the file has 2 bytes, less than the position 10"):
        asyncio.run(truncated())
    offset_file(path, "g").write_text("{not json")
    with pytest.raises(DataStreamError, match="offset file .* is corrupt"):
        asyncio.run(files.source(uri, group="g", partitions=None).start())
