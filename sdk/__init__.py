"""xpipe: a distributed pipeline orchestrator.

Build a :class:`Pipeline` of :class:`Task` objects (or with ``@task``/``@pipeline``),
then run it with :class:`PipelineManager`: with no address it starts a coordinator and
local workers for you; with ``coordinator="host:port"`` it uses a running cluster.

    >>> from xpipe import PipelineManager, Pipeline, Task        # doctest: +SKIP
    >>> p = Pipeline("etl")
    >>> extract = Task("extract", extract_data)
    >>> p.add_tasks([extract, Task("load", load_data, depends_on=[extract])])
    >>> with PipelineManager() as pm:
    ...     print(pm.execute_pipeline(p).outputs["load"])
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from ._domain import VERSION as __version__  # noqa: F401 - served by __getattr__
    from ._client import Client
    from ._dag import DataFlow, Pipeline, Task, pipeline, task
    from ._debug import DebugPause, DebugSession
    from ._handlers import handler
    from ._lineage import LineageGraph
    from .security._data_decorators import audit_data_access, log_data_access, track_data_lineage
    from ._manager import PipelineManager
    from ._options import RetryPolicy, TaskOptions
    from .streams import DataStream, StreamPipeline, StreamTask
    from ._policies import handle_errors
    from ._result import DataQualityReport, PipelineResult, TaskRunInfo
    from .telemetry._task import record_metric
    from ._checkpoint import checkpoint, last_checkpoint
    from .security._require import require_permission
    from .security._privacy import comply_with_gdpr, ensure_privacy_compliance
    from ._types import (
        CircuitInfo,
        ClusterStatus,
        InstallReport,
        LogChunk,
        NodeRecovery,
        RunEvent,
        RunInfo,
        RunSummary,
        TaskInfo,
        TaskResult,
        WorkerInfo,
        WorkerInstall,
    )
    from .errors import (
        AuthenticationError,
        CoordinatorUnavailableError,
        DataStreamError,
        DistributedExecutionError,
        HandlerNotFoundError,
        PermissionDeniedError,
        PipelineExecutionError,
        PipelineValidationError,
        RequestRejectedError,
        RunNotFoundError,
        SerializationError,
        XpipeError,
    )

# Each public name is imported on first use (PEP 562), so that building a Pipeline loads
# neither grpc nor the client, and the coordinator's state machine and the worker's task
# runner, which import leaf modules of this package, do not load the SDK's heavy parts.
_LAZY = {
    "__version__": "._domain",
    "Client": "._client",
    **dict.fromkeys(("checkpoint", "last_checkpoint"), "._checkpoint"),  # task checkpoints (user-guide)
    "DataFlow": "._dag",
    "Pipeline": "._dag",
    "Task": "._dag",
    "pipeline": "._dag",
    "task": "._dag",
    "handler": "._handlers",
    "LineageGraph": "._lineage",
    **dict.fromkeys(("audit_data_access", "log_data_access", "track_data_lineage"), ".security._data_decorators"),
    "PipelineManager": "._manager",
    **dict.fromkeys(("DebugPause", "DebugSession"), "._debug"),  # docs/debugging.md
    "RetryPolicy": "._options",
    # The seed's stream API (docs/streams.md).
    **dict.fromkeys(("StreamPipeline", "StreamTask", "DataStream"), ".streams"),
    "TaskOptions": "._options",
    "handle_errors": "._policies",
    "record_metric": ".telemetry._task",
    "require_permission": ".security._require",
    **dict.fromkeys(("comply_with_gdpr", "ensure_privacy_compliance"), ".security._privacy"),
    "PipelineResult": "._result",
    "TaskRunInfo": "._result",
    "DataQualityReport": "._result",
    **dict.fromkeys(
        ("CircuitInfo", "ClusterStatus", "InstallReport", "LogChunk", "NodeRecovery", "RunEvent", "RunInfo",
         "RunSummary", "TaskInfo", "TaskResult", "WorkerInfo", "WorkerInstall"),
        "._types",
    ),
    **dict.fromkeys(
        (
            "AuthenticationError", "CoordinatorUnavailableError", "DataStreamError", "DistributedExecutionError",
            "HandlerNotFoundError", "PermissionDeniedError", "PipelineExecutionError",
            "PipelineValidationError", "RequestRejectedError", "RunNotFoundError", "SerializationError", "XpipeError",
        ),
        ".errors",
    ),
}  # fmt: skip


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, renamed={"__version__": "VERSION"})

__all__ = [
    "AuthenticationError",
    "CircuitInfo",
    "Client",
    "ClusterStatus",
    "CoordinatorUnavailableError",
    "DataFlow",
    "DataQualityReport",
    "DataStream",
    "DataStreamError",
    "DebugPause",
    "DebugSession",
    "DistributedExecutionError",
    "HandlerNotFoundError",
    "InstallReport",
    "LineageGraph",
    "LogChunk",
    "NodeRecovery",
    "PermissionDeniedError",
    "Pipeline",
    "PipelineExecutionError",
    "PipelineManager",
    "PipelineResult",
    "PipelineValidationError",
    "RequestRejectedError",
    "RetryPolicy",
    "RunEvent",
    "RunInfo",
    "RunNotFoundError",
    "RunSummary",
    "SerializationError",
    "StreamPipeline",
    "StreamTask",
    "Task",
    "TaskInfo",
    "TaskOptions",
    "TaskResult",
    "TaskRunInfo",
    "WorkerInfo",
    "WorkerInstall",
    "XpipeError",
    "audit_data_access",
    "checkpoint",
    "comply_with_gdpr",
    "ensure_privacy_compliance",
    "handle_errors",
    "handler",
    "last_checkpoint",
    "log_data_access",
    "pipeline",
    "record_metric",
    "require_permission",
    "task",
    "track_data_lineage",
]
