"""The domain facts every part of xpipe shares, written once.

A leaf module: it imports nothing of ours but the generated enum values in
``xpipe._proto.common_pb2`` (protobuf only, no grpc), so the SDK, the coordinator's pure
state machine and the worker all read the same list without loading each other. Limits
and memory units live in the sibling leaf :mod:`xpipe._limits`; the retry schedule in
:mod:`xpipe._retry`.
"""

from __future__ import annotations

from ._proto import common_pb2 as _pb

__all__ = [
    "VERSION",
    "ERROR_TYPES",
    "TERMINAL_TASK_STATES",
    "TERMINAL_RUN_STATES",
    "PLACEMENT_STRATEGIES",
    "DEFAULT_PLACEMENT_STRATEGY",
    "RECOVERY_DECISIONS",
    "PRIVATE_FILE_MODE",
    "PRIVATE_DIR_MODE",
]

#: The version of xpipe (``xpipe.__version__``, the coordinator's ``ClusterStatus.version``,
#: and the distribution's version in ``pyproject.toml``, which reads it from here).
VERSION = "0.1.0"

#: The values of ``PipelineExecutionError.error_type`` (and of ``TaskError.error_type``).
ERROR_TYPES = (
    "TASK_FAILURE",
    "DEPENDENCY_FAILURE",
    "RESOURCE_EXHAUSTION",
    "DATA_QUALITY_FAILURE",
    "TIMEOUT",
    "CIRCUIT_OPEN",
    "CANCELLED",
    "SERIALIZATION",
    "WORKER_LOST",
    "INTERNAL",  # a coordinator bug failed the run; the coordinator stayed up for every other run
)

#: Task states an attempt never leaves.
TERMINAL_TASK_STATES = frozenset(
    {_pb.SUCCEEDED, _pb.FAILED, _pb.SKIPPED, _pb.CANCELLED, _pb.UPSTREAM_FAILED}
)
#: Run states a run never leaves.
TERMINAL_RUN_STATES = frozenset({_pb.RUN_SUCCEEDED, _pb.RUN_FAILED, _pb.RUN_CANCELLED})

#: How a run's tasks choose among fitting workers (``docs/placement.md``). The order is the
#: placement index's heap order, so append only.
PLACEMENT_STRATEGIES = ("resource_balanced", "pack", "spread")
#: The strategy of a run that names none.
DEFAULT_PLACEMENT_STRATEGY = "resource_balanced"

#: What a recovery handler may return (``@pipeline.recovery_handler``).
RECOVERY_DECISIONS = ("halt_pipeline", "retry_with_fallback", "skip", "continue")

#: Mode of every file that holds task arguments or results (the store, its manifest, the
#: artifacts): only the user the coordinator or worker runs as may read it.
PRIVATE_FILE_MODE = 0o600
#: Mode of the directories made for them.
PRIVATE_DIR_MODE = 0o700
