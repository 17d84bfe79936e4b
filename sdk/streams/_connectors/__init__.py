"""Connectors: one per URI scheme, each a source (fetch, commit) and a sink (write, confirm).

The stream runtime speaks only to the interface in :mod:`._base`; :func:`connector_for`
picks the implementation by scheme and imports it on first use, so a pipeline on Redis never
imports aiokafka. See docs/streams.md ("Sources and sinks") for what each broker holds.
"""

from ._base import (
    Connector,
    Message,
    OutRecord,
    Sink,
    Source,
    connector_for,
    internal_uri,
)

__all__ = ["Connector", "Message", "OutRecord", "Sink", "Source", "connector_for", "internal_uri"]
