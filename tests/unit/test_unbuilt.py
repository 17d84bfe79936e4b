"""Every call of the seed design exists: built, or raising NotImplementedError naming its issue.

A user who runs a sample from the seed learns why it stops, never meets an AttributeError.
The list of seed calls here was read off the seed's samples; when an issue lands, its calls
move from here to their own tests.
"""

from __future__ import annotations

import re

import pytest

import xpipe
from xpipe import Pipeline, PipelineManager

# Issue 17's autoscaling calls are built (tests/integration/test_autoscale.py); its other
# parts (deploy/, config, checkpoints) have no seed call on the manager or a pipeline.
NOT_BUILT_ON_MANAGER: dict[str, int] = {}
NOT_BUILT_ON_PIPELINE: dict[str, int] = {}


def test_every_seed_call_is_built_and_the_refusal_names_its_issue():
    """No seed call is left unbuilt; the mechanism for the next one still names its issue."""
    from xpipe._unbuilt import UNBUILT_FEATURES, not_built

    assert UNBUILT_FEATURES == {} and not NOT_BUILT_ON_MANAGER and not NOT_BUILT_ON_PIPELINE
    for name in ("create_debug_session", "enable_hot_reload", "warm_cache", "cache_strategy", "get_resource_manager"):
        assert "Not built yet" not in (getattr(PipelineManager, name).__doc__ or ""), name
    UNBUILT_FEATURES[99] = "a future feature"
    try:
        with pytest.raises(NotImplementedError, match=r"pm\.later\(\) is not built yet: a future feature is issue 99"):
            not_built("pm.later()", 99)(object())
    finally:
        del UNBUILT_FEATURES[99]


def test_the_seed_stream_api_is_built():
    from xpipe._unbuilt import UNBUILT_FEATURES

    assert {"StreamPipeline", "StreamTask", "DataStream"} <= set(xpipe.__all__)
    assert 14 not in UNBUILT_FEATURES  # the stream runtime runs (tests/integration/test_stream_runtime.py)


def test_the_seed_autoscaling_calls_are_built():
    assert callable(Pipeline("p").configure_auto_scaling)
    for name in ("get_resource_manager", "scale_up_resources"):
        assert getattr(PipelineManager, name).__doc__ and "Not built yet" not in getattr(PipelineManager, name).__doc__


def test_the_readme_lists_what_is_not_built_yet():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Not built yet", 1)[1].split("\n## ", 1)[0]
    for issue in {*NOT_BUILT_ON_MANAGER.values(), *NOT_BUILT_ON_PIPELINE.values()}:
        assert re.search(rf"\bissue {issue}\b", section), f"README's 'Not built yet' does not name issue {issue}"
