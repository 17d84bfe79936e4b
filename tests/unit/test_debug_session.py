"""Debug sessions refuse bad input before any run starts (no network: nothing listens)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xpipe import PipelineManager, PipelineValidationError, task


@pytest.fixture
def pm() -> Iterator[PipelineManager]:
    # Nothing listens there: every check here must refuse before any network use.
    manager = PipelineManager(coordinator="127.0.0.1:9", connect_timeout_s=0.5)

    @manager.pipeline("user_analytics")
    def build():
        @task("extract_users")
        def extract_user_data():
            return [1, 2, 3]

        @task("analyze_behavior", depends_on=["extract_users"])
        def analyze_user_behavior(user_data, threshold=2):
            return len(user_data)

        @task("report", depends_on=["analyze_behavior"])
        def report(*values, **options):
            return values

        return [extract_user_data, analyze_user_behavior, report]

    yield manager
    manager.close()


def test_an_unknown_pipeline_names_the_registered_ones(pm):
    known = r"known: \['user_analytics'\]"
    with pytest.raises(PipelineValidationError, match=rf"no pipeline named 'nope' is registered; {known}"):
        pm.create_debug_session("nope")


def test_an_unknown_task_names_the_pipelines_tasks(pm):
    debug = pm.create_debug_session("user_analytics")
    known = r"its tasks: \['extract_users', 'analyze_behavior', 'report'\]"
    with pytest.raises(ValueError, match=rf"set_breakpoint\('analyse'\): pipeline 'user_analytics' has no task 'analyse'; {known}"):  # noqa: E501
        debug.set_breakpoint("analyse", condition="len(data) > 1")
    with pytest.raises(ValueError, match=rf"step_through_task\('extract'\): .* has no task 'extract'; {known}"):
        debug.step_through_task("extract")
    assert debug.state == "not_started" and debug.run_id is None


def test_a_condition_that_does_not_parse_is_refused_at_set_breakpoint(pm):
    debug = pm.create_debug_session("user_analytics")
    with pytest.raises(ValueError, match=r"condition 'len\(data\) >' does not parse"):
        debug.set_breakpoint("analyze_behavior", condition="len(data) >")
    with pytest.raises(ValueError, match="condition must be a non-empty string or None"):
        debug.set_breakpoint("analyze_behavior", condition="  ")


def test_a_condition_with_an_unknown_name_names_the_ones_there_are(pm):
    debug = pm.create_debug_session("user_analytics")
    with pytest.raises(ValueError, match=r"uses unknown name 'users'; task 'analyze_behavior' has "
                                         r"\['data', 'threshold', 'user_data'\], and may call \['abs', 'all'"):
        debug.set_breakpoint("analyze_behavior", condition="len(users) > threshold")
    with pytest.raises(ValueError, match="uses unknown name 'open'"):  # only the listed functions
        debug.set_breakpoint("analyze_behavior", condition="open('/etc/passwd')")
    debug.set_breakpoint("analyze_behavior", condition="len(user_data) > threshold and max(data) < 10")
    # A function taking **kwargs may get any name: checked when evaluated instead.
    debug.set_breakpoint("report", condition="verbose")


def test_inspect_data_of_an_unknown_name_lists_what_there_is(pm):
    debug = pm.create_debug_session("user_analytics")
    with pytest.raises(LookupError, match=r"task 'extract_users' has no output: it is pending"):
        debug.inspect_data("extract_users")
    with pytest.raises(LookupError, match=r"no task and no input of a waiting task has that name; tasks: \['extract_"):
        debug.inspect_data("nope")
