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

from ._client import Client
from ._dag import DataFlow, Pipeline, Task, pipeline, task
from ._handlers import handler
from ._manager import PipelineManager
from ._policies import handle_errors
from ._result import PipelineResult, TaskRunInfo
from .errors import (
    CoordinatorUnavailableError,
    DataStreamError,
    DistributedExecutionError,
    PipelineExecutionError,
    PipelineValidationError,
    RequestRejectedError,
    RunNotFoundError,
    SerializationError,
    XpipeError,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CoordinatorUnavailableError",
    "DataFlow",
    "DataStreamError",
    "DistributedExecutionError",
    "Pipeline",
    "PipelineExecutionError",
    "PipelineManager",
    "PipelineResult",
    "PipelineValidationError",
    "RequestRejectedError",
    "RunNotFoundError",
    "SerializationError",
    "Task",
    "TaskRunInfo",
    "XpipeError",
    "handle_errors",
    "handler",
    "pipeline",
    "task",
]
