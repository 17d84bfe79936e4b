"""The streams scenario's peers, each run as its own process until SIGTERM.

``python -m bench._streams_peers {plain,quix} BOOTSTRAP IN MID OUT GROUP`` runs the
scenario's two stages (:func:`bench.streams.enrich`, then :func:`bench.streams.keep`)
from topic IN through MID to OUT:

- ``plain``: the practical limit, two ``aiokafka`` consume -> transform -> produce loops
  (one per stage) as tasks of one event loop. Each takes a batch with ``getmany``, sends
  every record without awaiting it, awaits the batch's deliveries, then commits: at-least-
  once, the guarantee xpipe gives.
- ``quix``: Quix Streams, one ``Application`` with two ``StreamingDataFrame`` s, the way its
  docs chain stages through a topic, with ``processing_guarantee="at-least-once"``.

A process of its own each, so the bench's output consumer never shares a GIL with them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

BATCH_RECORDS = 1000
"""Most records one ``getmany`` hands the plain loop."""


async def _plain_stage(
    bootstrap: str, src: str, dst: str, group: str, fn: Callable[[dict], dict | None]
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=BATCH_RECORDS)
            if not batches:
                continue
            deliveries = []
            for records in batches.values():
                for record in records:
                    out = fn(json.loads(record.value))
                    if out is not None:
                        deliveries.append(await producer.send(dst, json.dumps(out).encode(), key=record.key))
            await asyncio.gather(*deliveries)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def run_plain(bootstrap: str, topics: tuple[str, str, str], group: str) -> None:
    """Both stages as tasks of this loop until SIGTERM or SIGINT."""
    from bench.streams import enrich, keep

    source, middle, output = topics
    loop = asyncio.get_running_loop()
    stages = [
        asyncio.create_task(_plain_stage(bootstrap, source, middle, f"{group}-enrich", enrich)),
        asyncio.create_task(_plain_stage(bootstrap, middle, output, f"{group}-keep", keep)),
    ]
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: [t.cancel() for t in stages])
    done = await asyncio.gather(*stages, return_exceptions=True)
    failed = [
        exc for exc in done if isinstance(exc, BaseException) and not isinstance(exc, asyncio.CancelledError)
    ]
    if failed:
        raise failed[0]


def run_quix(bootstrap: str, topics: tuple[str, str, str], group: str) -> None:
    """Both stages in one Quix ``Application`` until SIGTERM (Quix stops on it by itself)."""
    from quixstreams import Application

    from bench.streams import enrich, keep

    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        auto_create_topics=False,
    )
    t_in, t_mid, t_out = (
        app.topic(name, value_deserializer="json", value_serializer="json") for name in topics
    )
    first = app.dataframe(t_in)
    first = first.apply(enrich)
    first.to_topic(t_mid)
    second = app.dataframe(t_mid)
    second = second.apply(keep).filter(lambda event: event is not None)
    second.to_topic(t_out)
    app.run()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kind, bootstrap, source, middle, output, group = argv
    topics = (source, middle, output)
    if kind == "plain":
        asyncio.run(run_plain(bootstrap, topics, group))
    elif kind == "quix":
        run_quix(bootstrap, topics, group)
    else:
        raise SystemExit(f"unknown peer {kind!r}: expected plain or quix")
    return 0


def quix_missing() -> str | None:
    """Why Quix Streams cannot run here, or None when it can."""
    try:
        import quixstreams  # noqa: F401
    except ImportError as exc:
        return f"quixstreams is not installed ({exc}); pip install 'xpipe-cluster[bench]'"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
