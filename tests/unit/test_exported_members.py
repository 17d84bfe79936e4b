"""The public surface is deliberate: a new export is a decision, not an accident."""

import xpipe
import xpipe.coordinator
import xpipe.errors
import xpipe.worker


def test_every_exported_name_exists():
    for module in (xpipe, xpipe.coordinator, xpipe.errors, xpipe.worker):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_sdk_exports_the_seed_names():
    seed = {"PipelineManager", "Pipeline", "Task", "DataFlow", "task", "pipeline", "handler", "handle_errors",
            "PipelineValidationError", "PipelineExecutionError", "DistributedExecutionError", "DataStreamError"}
    assert seed <= set(xpipe.__all__)


def test_private_modules_are_not_exported():
    assert not [name for name in xpipe.__all__ if name.startswith("_")]


def test_the_public_names_are_pinned_exactly():
    """Adding or dropping a public name is a decision: change this list with it (httpx's habit)."""
    assert xpipe.__all__ == [
        "AuthenticationError", "CircuitInfo", "Client", "ClusterStatus", "CoordinatorUnavailableError",
        "DataFlow", "DataQualityReport", "DataStream", "DataStreamError", "DebugPause", "DebugSession",
        "DistributedExecutionError",
        "HandlerNotFoundError", "InstallReport", "LineageGraph", "LogChunk", "NodeRecovery",
        "PermissionDeniedError", "Pipeline", "PipelineExecutionError", "PipelineManager", "PipelineResult",
        "PipelineValidationError", "RequestRejectedError", "RetryPolicy", "RunEvent", "RunInfo",
        "RunNotFoundError", "RunSummary", "SerializationError", "StreamPipeline", "StreamTask", "Task",
        "TaskInfo", "TaskOptions", "TaskResult", "TaskRunInfo", "WorkerInfo", "WorkerInstall", "XpipeError",
        "audit_data_access", "checkpoint", "comply_with_gdpr", "ensure_privacy_compliance", "handle_errors", "handler",
        "last_checkpoint", "log_data_access", "pipeline", "record_metric",
        "require_permission", "task", "track_data_lineage",
    ]  # fmt: skip
    assert xpipe.__all__ == sorted(xpipe.__all__)
    assert xpipe.coordinator.__all__ == ["Coordinator", "EngineConfig", "Store", "SQLiteStore"]
    assert xpipe.worker.__all__ == ["WorkerConfig", "WorkerDaemon"]
