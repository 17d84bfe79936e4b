"""Stream source/sink URIs: every scheme's forms, and an error naming the URI and the problem."""

from __future__ import annotations

import pytest
from xpipe.errors import DataStreamError
from xpipe.streams import KAFKA_BOOTSTRAP_ENV, SCHEMES, StreamURI, kafka_bootstrap, parse_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("kafka://127.0.0.1:9092/events-topic", StreamURI("kafka", "127.0.0.1", 9092, "events-topic")),
        ("kafka://events-topic", StreamURI("kafka", None, None, "events-topic")),
        ("kafka://broker/events", StreamURI("kafka", "broker", 9092, "events")),
        ("KAFKA://[::1]:19092/t.1", StreamURI("kafka", "::1", 19092, "t.1")),
        (
            "redis://127.0.0.1:6379/analytics-results",
            StreamURI("redis", "127.0.0.1", 6379, "analytics-results", 0),
        ),
        ("redis://127.0.0.1:6380/3/results", StreamURI("redis", "127.0.0.1", 6380, "results", 3)),
        ("redis://localhost/results", StreamURI("redis", "localhost", 6379, "results", 0)),
        ("nats://127.0.0.1:4222/orders.eu", StreamURI("nats", "127.0.0.1", 4222, "orders.eu")),
        ("file:///var/data/events.jsonl", StreamURI("file", None, None, "/var/data/events.jsonl")),
        ("file://localhost/tmp/x.jsonl", StreamURI("file", None, None, "/tmp/x.jsonl")),
        ("memory://events", StreamURI("memory", None, None, "events")),
    ],
)
def test_each_scheme_parses_and_prints_back(uri, expected):
    parsed = parse_uri(uri)
    assert parsed == expected
    assert parse_uri(str(parsed)) == parsed  # the plan carries URIs as text


def test_an_unknown_scheme_names_the_supported_ones():
    with pytest.raises(DataStreamError) as info:
        parse_uri("elasticsearch://127.0.0.1:9200/index")
    message = str(info.value)
    assert (
        "'elasticsearch://127.0.0.1:9200/index'" in message
        and "unsupported scheme 'elasticsearch'" in message
    )
    assert "kafka, redis, nats, file, memory" in message
    assert SCHEMES == ("kafka", "redis", "nats", "file", "memory")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("events", "not a URI"),
        ("kafka://h:99999/t", "Port out of range"),
        ("kafka://h:abc/t", "malformed"),
        ("kafka://h:0/t", "port 0"),
        ("kafka://h:9092/", "names no topic"),
        ("redis://h:6379", "names no stream key"),
        ("kafka://h:9092/a/b", "exactly one topic"),
        ("kafka://h:9092/bad$topic", "bad topic 'bad$topic'"),
        ("kafka://h:9092/t?acks=all", "no query"),
        ("kafka://user:pw@h:9092/t", "credentials"),
        ("kafka://h:9092/a b", "whitespace"),
        ("kafka://:9092/t", "names no host"),
        ("redis://h:6379/x/y/z", "redis://HOST:PORT[/DB]/STREAM-KEY"),
        ("redis://h:6379/db/key", "redis://HOST:PORT[/DB]/STREAM-KEY"),
        ("nats://h:4222/orders.*", "no wildcards"),
        ("nats://h:4222/", "names no subject"),
        ("nats://h:4222/a/b", "exactly one subject"),
        ("file://relative.jsonl", "not host 'relative.jsonl'"),
        ("file:///tmp/dir/", "absolute path to a file"),
        ("memory://", "memory://NAME"),
        ("memory://a/b", "memory://NAME"),
    ],
)
def test_a_malformed_uri_names_itself_and_the_problem(uri, problem):
    with pytest.raises(DataStreamError) as info:
        parse_uri(uri)
    assert repr(uri) in str(info.value) and problem in str(info.value)


def test_a_uri_must_be_a_string():
    with pytest.raises(DataStreamError, match="must be a string.*got int 9092"):
        parse_uri(9092)


def test_bare_kafka_reads_the_bootstrap_setting():
    bare = parse_uri("kafka://events")
    assert (
        kafka_bootstrap(bare, {KAFKA_BOOTSTRAP_ENV: "10.0.0.1:9092,10.0.0.2:9092"})
        == "10.0.0.1:9092,10.0.0.2:9092"
    )
    assert kafka_bootstrap(parse_uri("kafka://[::1]:19092/t"), {}) == "[::1]:19092"  # the URI's own host wins
    with pytest.raises(DataStreamError, match=f"names no broker and {KAFKA_BOOTSTRAP_ENV} is not set"):
        kafka_bootstrap(bare, {})
    with pytest.raises(DataStreamError, match="is not a Kafka URI"):
        kafka_bootstrap(parse_uri("memory://m"), {})
