"""Where a stream's records come from or go to, given as a URI, read into a frozen :class:`StreamURI`.

The schemes are the connectors the runtime has (one per broker). Parsing is pure and
strict: a URI that the runtime could not use fails here, when the pipeline is built, with an
error naming the URI and the problem, rather than at start-up on a worker.

    >>> parse_uri("kafka://127.0.0.1:9092/events")
    StreamURI(scheme='kafka', host='127.0.0.1', port=9092, name='events', db=None)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import DataStreamError

__all__ = ["DEFAULT_PORTS", "KAFKA_BOOTSTRAP_ENV", "SCHEMES", "StreamURI", "kafka_bootstrap", "parse_uri"]

#: The URI schemes a source or sink may use, in the order error messages list them.
SCHEMES = ("kafka", "redis", "nats", "file", "memory")
#: The port of each broker when its URI names a host without one.
DEFAULT_PORTS = {"kafka": 9092, "redis": 6379, "nats": 4222}
#: The setting that gives the bootstrap servers of a bare ``kafka://topic``.
KAFKA_BOOTSTRAP_ENV = "XPIPE_KAFKA_BOOTSTRAP"

# Kafka's own rule for a topic name; subjects and keys are kept to printable, space-free text.
_KAFKA_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_NATS_SUBJECT_RE = re.compile(r"[^\s.*>]+(\.[^\s.*>]+)*")
_PLAIN_NAME_RE = re.compile(r"[^\s/]{1,255}")


@dataclass(frozen=True, slots=True)
class StreamURI:
    """A parsed source or sink.

    Attributes:
        scheme: one of :data:`SCHEMES`.
        host: the broker's host; None for ``file``, ``memory`` and a bare ``kafka://topic``.
        port: the broker's port (its default when the URI names none); None where host is None.
        name: the topic (kafka), stream key (redis), subject (nats), absolute path (file) or
            name (memory).
        db: the Redis database number (0 when not given); None for the other schemes.
    """

    scheme: str
    host: str | None
    port: int | None
    name: str
    db: int | None = None

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.name}"
        if self.host is None:
            return f"{self.scheme}://{self.name}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = f"/{self.db}" if self.db else ""
        return f"{self.scheme}://{host}:{self.port}{db}/{self.name}"


def _fail(uri: str, problem: str) -> DataStreamError:
    return DataStreamError(f"stream URI {uri!r:.200}: {problem}")


def parse_uri(uri: str) -> StreamURI:
    """Read a source or sink URI.

    Forms: ``kafka://HOST[:PORT]/topic`` or bare ``kafka://topic`` (bootstrap servers from
    :data:`KAFKA_BOOTSTRAP_ENV`, see :func:`kafka_bootstrap`), ``redis://HOST[:PORT][/DB]/key``,
    ``nats://HOST[:PORT]/subject``, ``file:///absolute/path.jsonl``, ``memory://name``.

    Raises:
        DataStreamError: not a string, an unsupported scheme (the message lists
            :data:`SCHEMES`), or a malformed URI for its scheme; the message names the URI.
    """
    if not isinstance(uri, str):
        raise DataStreamError(
            f"a stream URI must be a string like 'kafka://HOST:PORT/topic', got {type(uri).__name__} {uri!r:.80}"
        )
    text = uri.strip()
    if "://" not in text:
        raise _fail(uri, f"not a URI; expected SCHEME://..., with a scheme among {', '.join(SCHEMES)}")
    scheme = text.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise _fail(uri, f"unsupported scheme {scheme!r}; supported: {', '.join(SCHEMES)}")
    if any(ch.isspace() for ch in text):
        raise _fail(uri, "contains whitespace")
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port  # .port raises ValueError when out of range or not a number
    except ValueError as exc:
        raise _fail(uri, f"malformed: {exc}") from None
    if parts.query or parts.fragment:
        raise _fail(uri, "takes no query (?...) or fragment (#...)")
    if parts.username or parts.password:
        raise _fail(uri, "credentials do not belong in a stream URI; configure them on the workers")
    path = unquote(parts.path)
    if scheme == "file":
        return _file(uri, parts.netloc, path)
    if scheme == "memory":
        if path not in ("", "/") or port is not None or not _PLAIN_NAME_RE.fullmatch(parts.netloc):
            raise _fail(uri, "expected memory://NAME (one name, no host, port or path)")
        return StreamURI("memory", None, None, parts.netloc)
    if scheme == "kafka" and path in ("", "/") and port is None:
        # Bare kafka://topic: the "host" is the topic; the servers come from the setting.
        return StreamURI("kafka", None, None, _checked_name(uri, "kafka", parts.netloc))
    if not host:
        raise _fail(uri, f"names no host; expected {scheme}://HOST:PORT/...")
    port = DEFAULT_PORTS[scheme] if port is None else port
    if port == 0:
        raise _fail(uri, "port 0 is not a broker's port")
    segments = path.split("/")[1:] if path.startswith("/") else []
    if not any(segments):
        what = {"kafka": "topic", "redis": "stream key", "nats": "subject"}[scheme]
        raise _fail(uri, f"names no {what} after the host")
    if scheme == "redis":
        if len(segments) == 2 and segments[0].isdigit():
            return StreamURI("redis", host, port, _checked_name(uri, scheme, segments[1]), int(segments[0]))
        if len(segments) != 1:
            raise _fail(uri, "expected redis://HOST:PORT[/DB]/STREAM-KEY (DB a number)")
        return StreamURI("redis", host, port, _checked_name(uri, scheme, segments[0]), 0)
    if len(segments) != 1:
        what = "topic" if scheme == "kafka" else "subject"
        raise _fail(uri, f"expected {scheme}://HOST:PORT/{what.upper()} (exactly one {what} after the host)")
    return StreamURI(scheme, host, port, _checked_name(uri, scheme, segments[0]))


def _file(uri: str, netloc: str, path: str) -> StreamURI:
    if netloc not in ("", "localhost"):
        raise _fail(
            uri,
            f"a file URI names a path on the worker, not host {netloc!r}; expected file:///absolute/path.jsonl",
        )
    if not path.startswith("/") or path.endswith("/"):
        raise _fail(uri, "expected file:///absolute/path.jsonl (an absolute path to a file)")
    return StreamURI("file", None, None, path)


def _checked_name(uri: str, scheme: str, name: str) -> str:
    if scheme == "kafka" and not _KAFKA_TOPIC_RE.fullmatch(name):
        raise _fail(uri, f"bad topic {name!r}: Kafka topics are 1-249 characters of A-Z a-z 0-9 . _ -")
    if scheme == "nats" and not _NATS_SUBJECT_RE.fullmatch(name):
        raise _fail(uri, f"bad subject {name!r}: dot-separated tokens, no spaces and no wildcards (* >)")
    if not _PLAIN_NAME_RE.fullmatch(name):
        raise _fail(uri, f"bad {scheme} name {name!r}: 1-255 characters, no spaces or '/'")
    return name


def kafka_bootstrap(uri: StreamURI, environ: dict[str, str] | None = None) -> str:
    """The bootstrap servers (``"host:port[,host:port]"``) for a Kafka URI.

    The URI's own host wins; a bare ``kafka://topic`` reads :data:`KAFKA_BOOTSTRAP_ENV`.

    Raises:
        DataStreamError: not a Kafka URI, or a bare one with the setting unset.
    """
    if uri.scheme != "kafka":
        raise DataStreamError(f"{uri} is not a Kafka URI")
    if uri.host is not None:
        host = f"[{uri.host}]" if ":" in uri.host else uri.host
        return f"{host}:{uri.port}"
    servers = (os.environ if environ is None else environ).get(KAFKA_BOOTSTRAP_ENV, "").strip()
    if not servers:
        raise DataStreamError(
            f"{uri} names no broker and {KAFKA_BOOTSTRAP_ENV} is not set; use kafka://HOST:PORT/{uri.name} "
            f"or set {KAFKA_BOOTSTRAP_ENV}=HOST:PORT"
        )
    return servers
