"""Validation of pipeline specs as they arrive over the wire.

Polyglot clients skip the Python SDK, so the coordinator checks every spec again with
the same graph rules (:func:`xpipe._dag.validate_graph`) plus what only the wire form
can get wrong: a task with no kind, a code hash with no code, a flow from nowhere.
"""

from __future__ import annotations

from xpipe._dag import validate_graph
from xpipe._proto import common_pb2 as pb
from xpipe.errors import PipelineValidationError

from ._placement import normalize_strategy

__all__ = ["validate_spec", "MAX_TASKS"]

#: Most tasks one pipeline may hold.
MAX_TASKS = 1_000_000


def validate_spec(spec: pb.PipelineSpec) -> list[str]:
    """Check a submitted spec; return a topological order of its task names.

    Raises:
        PipelineValidationError: naming the first problem found.
    """
    if not spec.name:
        raise PipelineValidationError("pipeline has no name")
    if len(spec.tasks) > MAX_TASKS:
        raise PipelineValidationError(f"pipeline {spec.name!r} has {len(spec.tasks)} tasks; the limit is {MAX_TASKS}")
    try:
        normalize_strategy(spec.placement_strategy)
    except ValueError as exc:
        raise PipelineValidationError(f"pipeline {spec.name!r}: {exc}") from None
    code = {blob.code_hash for blob in spec.code}
    names: list[str] = []
    deps: dict[str, list[str]] = {}
    for task in spec.tasks:
        if not task.name:
            raise PipelineValidationError(f"pipeline {spec.name!r} has a task with no name")
        kind = task.WhichOneof("kind")
        if kind is None:
            raise PipelineValidationError(f"task {task.name!r} has no kind: set python, command or handler")
        if kind == "python":
            if not task.python.import_path and not task.python.code_hash:
                raise PipelineValidationError(f"task {task.name!r}: python call needs import_path or code_hash")
            if task.python.code_hash and task.python.code_hash not in code:
                raise PipelineValidationError(
                    f"task {task.name!r} refers to code {task.python.code_hash[:12]}... that the pipeline does not carry"
                )
        elif kind == "command" and not task.command.argv:
            raise PipelineValidationError(f"task {task.name!r}: command has an empty argv")
        elif kind == "handler" and not task.handler.name:
            raise PipelineValidationError(f"task {task.name!r}: handler has no name")
        if task.timeout_s < 0:
            raise PipelineValidationError(f"task {task.name!r}: timeout_s must not be negative")
        if task.retry.retry_delay_s < 0:
            raise PipelineValidationError(f"task {task.name!r}: retry_delay_s must not be negative")
        names.append(task.name)
        deps[task.name] = [*task.depends_on, *(f.source_task for f in task.flows)]
        for flow in task.flows:
            if not flow.parameter:
                raise PipelineValidationError(f"task {task.name!r}: a DataFlow from {flow.source_task!r} has no parameter")
    if spec.HasField("recovery_handler"):
        handler = spec.recovery_handler
        if not handler.import_path and not handler.code_hash:
            raise PipelineValidationError(f"pipeline {spec.name!r}: recovery_handler needs import_path or code_hash")
        if handler.code_hash and handler.code_hash not in code:
            raise PipelineValidationError(
                f"pipeline {spec.name!r}: recovery_handler refers to code {handler.code_hash[:12]}... "
                "that the pipeline does not carry"
            )
    return validate_graph(names, deps)
