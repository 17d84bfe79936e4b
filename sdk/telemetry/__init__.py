"""Telemetry: metrics, traces and task logs (issue 12).

One concept per module:

- ``_listen``: the ``--metrics-listen`` flag, parsed without loading OpenTelemetry;
- ``_export``: serves a process's metrics as Prometheus text on ``/metrics``;
- ``_task``: what a task records about itself (``record_metric``, tracked values, performance);
- ``_monitoring`` and ``_tracking``: ``pipeline.enable_monitoring`` and the ``track_*`` decorators;
- ``_tracing``: one OpenTelemetry trace per run across processes;
- ``_spans``: xpipe's own spans, written as OTLP protobuf and exported in batches (cheap per task);
- ``_tasklogs``: the worker's buffer of task output and its caps;
- ``_logformat``: the daemons' own logs as text or JSON lines.

The leaves import nothing of the coordinator or the worker, so every process can use them;
OpenTelemetry itself is imported only when metrics or traces are switched on.
"""
