"""Micro-benchmark: records/s through the coordinator's memory broker on loopback.

Starts one real coordinator (no workers), produces N records through the memory connector's
sink in writes of ``--batch``, then reads them back with a source, committing after each
fetch. Prints both rates. Not the project bench (``python -m bench``): a quick figure for
the broker alone. Usage: ``.venv/bin/python scripts/membroker_microbench.py [--records 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Cluster  # noqa: E402
from xpipe.streams._connectors import OutRecord, _memory  # noqa: E402
from xpipe.streams._uri import parse_uri  # noqa: E402


async def measure(records: int, batch: int, value_bytes: int) -> tuple[float, float]:
    connector = _memory.MemoryConnector()
    uri = parse_uri("memory://microbench")
    sink = connector.sink(uri)
    await sink.start()
    value = b"v" * value_bytes
    started = time.perf_counter()
    for i in range(0, records, batch):
        await sink.write([OutRecord(value, key=b"%d" % j) for j in range(i, min(i + batch, records))])
    produce_s = time.perf_counter() - started
    await sink.stop()
    source = connector.source(uri, group="g", partitions=None)
    await source.start()
    got = 0
    started = time.perf_counter()
    while got < records:
        messages = await source.fetch(batch, 1.0)
        await source.commit({0: messages[-1]})
        got += len(messages)
    consume_s = time.perf_counter() - started
    await source.stop()
    return records / produce_s, records / consume_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), workers=0) as cluster:
        _memory.configure(cluster.address)
        produce, consume = asyncio.run(measure(args.records, args.batch, args.value_bytes))
    print(f"{args.records} records of {args.value_bytes} B, batches of {args.batch}: "
          f"produce {produce:,.0f} records/s, fetch+commit {consume:,.0f} records/s")  # fmt: skip


if __name__ == "__main__":
    main()
