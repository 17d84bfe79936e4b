"""The memory broker's pure core: offsets, groups, commits, trimming, bad input."""

from __future__ import annotations

import asyncio

import pytest
from xpipe.coordinator._membroker import BadRequest, MemoryBroker, OffsetOutOfRange, UnknownStream
from xpipe.streams._memory_limits import MAX_PARTITIONS, MAX_RECORD_BYTES, MAX_STREAM_NAME_CHARS


def values(result) -> list[bytes]:
    return [r.value for _, r in result.records]


def test_offsets_start_at_zero_and_grow_by_one_per_partition():
    broker = MemoryBroker()
    assert broker.produce("s", [(b"", b"a", 0), (b"", b"b", 1), (b"k", b"c", 0)], partitions=2, now_s=5.0) == [0, 0, 1]
    assert broker.produce("s", [(b"", b"d", 0)], partitions=9, now_s=6.0) == [2]  # keeps its 2 partitions
    got = broker.fetch("s", "g", 0, from_committed=True, from_offset=0, max_records=0)
    assert [(o, r.key, r.value, r.timestamp_s) for o, r in got.records] == [
        (0, b"", b"a", 5.0), (1, b"k", b"c", 5.0), (2, b"", b"d", 6.0)
    ]  # fmt: skip
    assert (got.end_offset, got.committed, got.trimmed) == (3, 0, 0)
    assert broker.describe("s", "g", create_partitions=0) == (True, 2, [3, 1], [0, 0])


def test_groups_commit_independently_and_fetch_resumes_there():
    broker = MemoryBroker()
    broker.produce("s", [(b"", bytes([i]), 0) for i in range(10)], partitions=1, now_s=0)
    broker.fetch("s", "b", 0, from_committed=True, from_offset=0, max_records=1)  # b reads: it holds 0..
    broker.commit("s", "a", 0, 4)
    assert values(broker.fetch("s", "a", 0, from_committed=True, from_offset=0, max_records=2)) == [b"\x04", b"\x05"]
    assert values(broker.fetch("s", "b", 0, from_committed=True, from_offset=0, max_records=2)) == [b"\x00", b"\x01"]
    assert values(broker.fetch("s", "a", 0, from_committed=False, from_offset=8, max_records=0)) == [b"\x08", b"\x09"]
    assert broker.describe("s", "a", create_partitions=0)[3] == [4]
    assert broker.describe("s", "", create_partitions=0)[3] == []


def test_unknown_stream_fetches_empty_and_describe_creates_on_request():
    broker = MemoryBroker()
    got = broker.fetch("nope", "g", 3, from_committed=True, from_offset=0, max_records=0)
    assert (got.records, got.end_offset) == ([], 0)
    assert broker.describe("nope", "g", create_partitions=0) == (False, 0, [], [])
    assert broker.describe("new", "g", create_partitions=4) == (True, 4, [0, 0, 0, 0], [0, 0, 0, 0])
    assert broker.describe("new", "", create_partitions=8)[1] == 4


def test_cap_trims_oldest_records_of_a_partition_and_counts_them():
    broker = MemoryBroker(max_stream_records=10)  # 2 partitions: 5 records each
    broker.produce("s", [(b"", bytes([i]), 0) for i in range(8)], partitions=2, now_s=0)
    got = broker.fetch("s", "g", 0, from_committed=True, from_offset=0, max_records=0)
    assert [o for o, _ in got.records] == [3, 4, 5, 6, 7]
    assert (got.trimmed, got.end_offset) == (3, 8)
    assert broker.fetch("s", "g", 1, from_committed=True, from_offset=0, max_records=0).trimmed == 0


def test_byte_cap_trims_too():
    broker = MemoryBroker(max_stream_bytes=MAX_RECORD_BYTES)
    big = b"x" * (MAX_RECORD_BYTES // 2)
    broker.produce("s", [(b"", big, 0)] * 3, partitions=1, now_s=0)
    got = broker.fetch("s", "g", 0, from_committed=True, from_offset=0, max_records=0)
    assert [o for o, _ in got.records] == [1, 2] and got.trimmed == 1


def test_records_every_group_passed_are_dropped_early():
    broker = MemoryBroker()
    broker.produce("s", [(b"", b"%d" % i, 0) for i in range(3000)], partitions=1, now_s=0)
    broker.fetch("s", "b", 0, from_committed=True, from_offset=0, max_records=1)  # b reads: it holds from 0
    broker.commit("s", "a", 0, 2500)
    assert broker.fetch("s", "x", 0, from_committed=False, from_offset=0, max_records=1).records[0][0] == 0
    broker.commit("s", "b", 0, 2000)
    late = broker.fetch("s", "c", 0, from_committed=True, from_offset=0, max_records=1)
    assert [o for o, _ in late.records] == [2000]  # the oldest kept: below it every group was done
    assert late.trimmed == 0  # early drops are not cap trims
    broker.commit("s", "b", 0, 3000)  # c (at 2000, having fetched) still holds 2000..
    assert [o for o, _ in broker.fetch("s", "a", 0, from_committed=True, from_offset=0, max_records=1).records] == [2500]
    broker.commit("s", "c", 0, 2700)
    assert [o for o, _ in broker.fetch("s", "d", 0, from_committed=True, from_offset=0, max_records=1).records] == [2500]
    assert broker.produce("s", [(b"", b"n", 0)], partitions=1, now_s=0) == [3000]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.produce("", [(b"", b"v", 0)], partitions=1, now_s=0), "stream is empty"),
        (lambda b: b.produce("x" * (MAX_STREAM_NAME_CHARS + 1), [], partitions=1, now_s=0), f"the limit is {MAX_STREAM_NAME_CHARS}"),
        (lambda b: b.produce("s", [(b"", b"v", 0), (b"", b"v", 2)], partitions=2, now_s=0), "records[1].partition 2 is out of range"),
        (lambda b: b.produce("s", [(b"k", b"v" * MAX_RECORD_BYTES, 0)], partitions=1, now_s=0), f"records[0] has {MAX_RECORD_BYTES + 1} bytes"),
        (lambda b: b.produce("s", [], partitions=MAX_PARTITIONS + 1, now_s=0), f"partitions {MAX_PARTITIONS + 1}"),
        (lambda b: b.describe("s", "", create_partitions=MAX_PARTITIONS + 1), f"create_partitions {MAX_PARTITIONS + 1}"),
        (lambda b: b.fetch("have", "g", 1, from_committed=True, from_offset=0, max_records=0), "partition 1 is out of range"),
        (lambda b: b.fetch("have", "", 0, from_committed=True, from_offset=0, max_records=0), "group is empty"),
        (lambda b: b.commit("have", "g", 0, 2), "offset 2 is past the end 1"),
        (lambda b: b.commit("have", "", 0, 0), "group is empty"),
    ],
)
def test_bad_input_names_the_field_and_value_and_appends_nothing(call, message):
    broker = MemoryBroker()
    broker.produce("have", [(b"", b"v", 0)], partitions=1, now_s=0)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(broker)
    assert "s" not in broker  # a refused produce creates nothing
    assert broker.describe("have", "g", create_partitions=0) == (True, 1, [1], [0])


def test_offset_past_the_end_and_commit_to_unknown_stream():
    broker = MemoryBroker()
    broker.produce("s", [(b"", b"v", 0)], partitions=1, now_s=0)
    with pytest.raises(OffsetOutOfRange, match="from_offset 51 is past the end 1"):
        broker.fetch("s", "g", 0, from_committed=False, from_offset=51, max_records=0)
    with pytest.raises(UnknownStream, match="'gone' does not exist"):
        broker.commit("gone", "g", 0, 1)


def test_on_append_names_each_partition_once_per_produce():
    broker = MemoryBroker()
    seen: list[tuple[str, int]] = []
    broker.on_append = lambda s, p: seen.append((s, p))
    broker.produce("s", [(b"", b"v", 1), (b"", b"v", 0), (b"", b"v", 1)], partitions=2, now_s=0)
    assert seen == [("s", 0), ("s", 1)]


def test_fetch_long_polls_until_a_produce_and_leaves_no_waiter_behind():
    from xpipe._proto import stream_pb2
    from xpipe.coordinator import _membroker

    broker = MemoryBroker()

    async def main():
        request = stream_pb2.FetchRequest(stream="s", group="g", from_committed=True, wait_ms=5000)
        poll = asyncio.ensure_future(_membroker.fetch(broker, request, context=None))
        wakeups = _membroker._wakeups(broker)
        while not len(wakeups):  # until the poll waits on its partition
            await asyncio.sleep(0)
        assert not poll.done()
        broker.produce("s", [(b"", b"v", 0)], partitions=1, now_s=1.0)
        answer = await asyncio.wait_for(poll, 1.0)
        idle = await _membroker.fetch(broker, stream_pb2.FetchRequest(stream="t", group="g", wait_ms=10), None)
        return answer, idle, len(wakeups)

    answer, idle, waiting = asyncio.run(main())
    assert [(r.offset, r.value, r.timestamp) for r in answer.records] == [(0, b"v", 1.0)]
    assert list(idle.records) == [] and waiting == 0
