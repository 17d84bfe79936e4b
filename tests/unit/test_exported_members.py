"""The public surface is deliberate: a new export is a decision, not an accident."""

import xpipe
import xpipe.coordinator
import xpipe.errors


def test_every_exported_name_exists():
    for module in (xpipe, xpipe.coordinator, xpipe.errors):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_sdk_exports_the_seed_names():
    seed = {"PipelineManager", "Pipeline", "Task", "DataFlow", "task", "pipeline", "handler", "handle_errors",
            "PipelineValidationError", "PipelineExecutionError", "DistributedExecutionError", "DataStreamError"}
    assert seed <= set(xpipe.__all__)


def test_private_modules_are_not_exported():
    assert not [name for name in xpipe.__all__ if name.startswith("_")]
