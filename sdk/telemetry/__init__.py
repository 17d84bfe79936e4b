"""Telemetry: metrics, traces and task logs (issue 12).

One concept per module: ``_export`` serves Prometheus metrics, ``_task`` records what a task
measures about itself, ``_tracing`` carries one trace per run across processes. The leaves
import nothing of the coordinator or the worker, so every process can use them.
"""
