"""Task options as frozen RetryPolicy/TaskOptions, the flat keywords that fold into them,
and durations: ``_s`` names take seconds, names without ``_s`` also read "1min"."""

import dataclasses
import pickle
from datetime import timedelta

import pytest

import tests.helpers_tasks as ht
from xpipe import Pipeline, PipelineValidationError, RetryPolicy, Task, TaskOptions, task
from xpipe._proto import common_pb2 as pb

# -- frozen ------------------------------------------------------------------------------


def test_options_objects_are_frozen_and_keep_their_own_copies():
    labels = {"zone": "a"}
    resources = {"cpu": 2}
    opts = TaskOptions(labels=labels, resource_requirements=resources)
    labels["zone"] = "b"
    resources["cpu"] = 64
    assert opts.labels == {"zone": "a"} and opts.resource_requirements == {"cpu": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.priority = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_retries = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        opts.labels["zone"] = "c"  # type: ignore[index]
    t = Task("t", ht.noop, options=opts)
    assert t.options is opts and t.retry_policy is opts.retry
    assert hash(opts) == hash(TaskOptions(labels={"zone": "a"}, resource_requirements={"cpu": 2}))


def test_options_survive_pickling():
    t = Task("t", ht.noop, labels={"gpu": "a100"}, resource_requirements={"memory": "1Gi"}, timeout="1h")
    copy = pickle.loads(pickle.dumps(t))
    assert copy.options == t.options and copy.timeout_s == 3600.0
    assert pickle.loads(pickle.dumps(RetryPolicy(max_retries=2))) == RetryPolicy(max_retries=2)


def test_durations_are_normalised_to_float_seconds():
    policy = RetryPolicy(retry_delay_s=2, max_retry_delay_s=timedelta(minutes=1), jitter=0)
    assert (policy.retry_delay_s, policy.max_retry_delay_s, policy.jitter) == (2.0, 60.0, 0.0)
    assert type(policy.retry_delay_s) is float
    assert TaskOptions(timeout_s=timedelta(hours=1)).timeout_s == 3600.0


# -- validation names the field ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_retries": -1}, r"RetryPolicy: max_retries must be an int >= 0 or None, got -1"),
        ({"max_retries": 1.5}, r"RetryPolicy: max_retries must be an int"),
        ({"max_retries": True}, r"RetryPolicy: max_retries must be an int"),
        ({"retry_delay_s": -1}, r"RetryPolicy: retry_delay_s must be a number >= 0 \(at most 31622400\)"),
        ({"retry_delay_s": float("nan")}, r"RetryPolicy: retry_delay_s must be a number >= 0"),
        ({"backoff": "random"}, r"RetryPolicy: backoff must be one of \['exponential', 'fixed', 'linear'\]"),
        ({"max_retry_delay_s": 0}, r"RetryPolicy: max_retry_delay_s must be a number > 0"),
        (
            {"max_retry_delay_s": 4e7},
            r"RetryPolicy: max_retry_delay_s must be a number > 0 \(at most 31622400\)",
        ),
        ({"jitter": 1.5}, r"RetryPolicy: jitter must be a fraction between 0 and 1, got 1.5"),
    ],
)
def test_retry_policy_refuses_bad_fields_by_name(kwargs, match):
    with pytest.raises(PipelineValidationError, match=match):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retry": {"max_retries": 3}}, r"TaskOptions: retry must be a RetryPolicy, got dict"),
        ({"timeout_s": 0}, r"TaskOptions: timeout_s must be a number > 0"),
        ({"timeout_s": float("inf")}, r"TaskOptions: timeout_s must be a number > 0"),
        (
            {"resource_requirements": [("cpu", 1)]},
            r"TaskOptions: resource_requirements must be a dict, got list",
        ),
        ({"resource_requirements": {"cpu": -1}}, r"TaskOptions: resource_requirements \['cpu'\] is -1.0"),
        ({"labels": {"zone": 1}}, r"TaskOptions: labels must map str to str"),
        (
            {"labels": {f"k{i}": "v" for i in range(65)}},
            r"TaskOptions: labels has 65 entries; the limit is 64",
        ),
        ({"priority": 2**31}, r"TaskOptions: priority must be a 32-bit int"),
        ({"circuit": " "}, r"TaskOptions: circuit must be a non-empty string"),
    ],
)
def test_task_options_refuse_bad_fields_by_name(kwargs, match):
    with pytest.raises(PipelineValidationError, match=match):
        TaskOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retry_jitter": 2}, r"task 't': retry_jitter must be a fraction between 0 and 1, got 2"),
        ({"retry_backoff": "random"}, r"task 't': retry_backoff must be one of"),
        ({"priority": 1.5}, r"task 't': priority must be a 32-bit int"),
        ({"retry": "3 times"}, r"task 't': retry must be a RetryPolicy, got str"),
        ({"options": {"priority": 1}}, r"task 't': options must be a TaskOptions, got dict"),
    ],
)
def test_flat_keyword_errors_name_the_task_and_the_keyword(kwargs, match):
    with pytest.raises(PipelineValidationError, match=match):
        Task("t", ht.noop, **kwargs)


# -- flat and structured forms -----------------------------------------------------------


def test_flat_and_structured_forms_make_equal_options_and_specs():
    flat = Task(
        "t", ht.noop, max_retries=3, retry_delay_s=2, retry_backoff="exponential", max_retry_delay_s=30,
        retry_jitter=0.2, timeout_s=60, resource_requirements={"cpu": 2}, labels={"zone": "a"}, priority=5,
        circuit="db",
    )  # fmt: skip
    retry = RetryPolicy(
        max_retries=3, retry_delay_s=2, backoff="exponential", max_retry_delay_s=30, jitter=0.2
    )
    rest = {
        "timeout_s": 60,
        "resource_requirements": {"cpu": 2},
        "labels": {"zone": "a"},
        "priority": 5,
        "circuit": "db",
    }
    structured = Task("t", ht.noop, options=TaskOptions(retry=retry, **rest))
    split = Task("t", ht.noop, retry=retry, options=TaskOptions(**rest))
    assert flat.options == structured.options == split.options
    specs = [t.to_proto({}).SerializeToString(deterministic=True) for t in (flat, structured, split)]
    assert specs[0] == specs[1] == specs[2]
    # The seed's attributes read the same values.
    assert (flat.max_retries, flat.retry_delay_s, flat.retry_backoff, flat.max_retry_delay_s, flat.retry_jitter) == (
        3, 2.0, "exponential", 30.0, 0.2,
    )  # fmt: skip
    assert (structured.timeout_s, structured.priority, structured.circuit) == (60.0, 5, "db")
    assert dict(structured.labels) == {"zone": "a"} and dict(structured.resource_requirements) == {"cpu": 2}


def test_a_task_without_options_matches_the_defaults_on_the_wire():
    spec = Task("t", ht.noop).to_proto({})
    assert (spec.retry.max_retries, spec.retry.retry_delay_s, spec.retry.backoff, spec.retry.jitter) == (
        0, 0.0, pb.BACKOFF_FIXED, pytest.approx(0.1),
    )  # fmt: skip
    assert (spec.timeout_s, spec.priority, spec.circuit, dict(spec.labels)) == (0.0, 0, "", {})
    assert not spec.HasField("resources")


def test_flat_keywords_fill_fields_the_structured_form_leaves_unset():
    t = Task(
        "t",
        ht.noop,
        retry=RetryPolicy(max_retries=2),
        retry_delay="30s",
        options=TaskOptions(priority=1),
        timeout_s=5,
    )
    assert t.options == TaskOptions(
        retry=RetryPolicy(max_retries=2, retry_delay_s=30), priority=1, timeout_s=5
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_retries": 1, "retry": RetryPolicy(max_retries=2)},
         r"task 't': max_retries= and retry=RetryPolicy\(max_retries=...\) both set max_retries; give one"),
        ({"retry_backoff": "linear", "options": TaskOptions(retry=RetryPolicy(backoff="fixed"))},
         r"task 't': retry_backoff= and retry=RetryPolicy\(backoff=...\) both set backoff"),
        ({"timeout_s": 5, "options": TaskOptions(timeout_s=6)},
         r"task 't': timeout_s= and options=TaskOptions\(timeout_s=...\) both set timeout_s"),
        ({"timeout": "1h", "options": TaskOptions(timeout_s=6)},
         r"task 't': timeout_s= and options=TaskOptions\(timeout_s=...\) both set timeout_s"),
        ({"labels": {"a": "b"}, "options": TaskOptions(labels={"c": "d"})}, r"labels= and options=TaskOptions\(labels"),
        ({"retry": RetryPolicy(max_retries=1), "options": TaskOptions(retry=RetryPolicy(jitter=0))},
         r"task 't': retry= and options=TaskOptions\(retry=...\) both set the retry policy"),
        ({"timeout": "1h", "timeout_s": 3600}, r"task 't': timeout= and timeout_s= are the same option; give one"),
        ({"retry_delay": 1, "retry_delay_s": 1}, r"retry_delay= and retry_delay_s= are the same option"),
    ],
)  # fmt: skip
def test_an_option_given_both_ways_is_refused_naming_both(kwargs, match):
    with pytest.raises(PipelineValidationError, match=match):
        Task("t", ht.noop, **kwargs)


def test_decorator_command_and_handler_take_the_structured_form():
    @task(retry=RetryPolicy(max_retries=2), timeout="90s")
    def fetch():
        return 1

    assert fetch.options == TaskOptions(retry=RetryPolicy(max_retries=2), timeout_s=90)
    cmd = Task.command("c", ["true"], options=TaskOptions(priority=3), retry_jitter=0)
    assert (cmd.priority, cmd.retry_jitter) == (3, 0.0)
    h = Task.handler("h", "resize", retry=RetryPolicy(backoff="linear"), max_retry_delay="1min")
    assert (h.retry_backoff, h.max_retry_delay_s) == ("linear", 60.0)
    with pytest.raises(PipelineValidationError, match=r"task 'c2': max_retries= and retry=RetryPolicy"):
        Task.command("c2", ["true"], retry=RetryPolicy(max_retries=1), max_retries=1)


def test_pipeline_retry_defaults_apply_to_a_structured_policy_that_leaves_them_unset():
    p = Pipeline("p")
    p.configure_fault_tolerance(max_retries_per_task=4, retry_backoff_strategy="linear")
    p.add_tasks([
        Task("inherits", ht.noop, retry=RetryPolicy(retry_delay_s=1)),
        Task("own", ht.noop, retry=RetryPolicy(max_retries=0, backoff="exponential")),
    ])  # fmt: skip
    inherits, own = p.to_proto().tasks
    assert (inherits.retry.max_retries, inherits.retry.backoff, inherits.retry.retry_delay_s) == (
        4,
        pb.BACKOFF_LINEAR,
        1.0,
    )
    assert (own.retry.max_retries, own.retry.backoff) == (0, pb.BACKOFF_EXPONENTIAL)


def test_assigning_a_seed_attribute_replaces_the_frozen_options_after_checking():
    t = Task("t", ht.noop, options=TaskOptions(priority=1))
    before = t.options
    t.timeout_s = 30
    assert t.options.timeout_s == 30.0 and before.timeout_s is None and t.priority == 1
    with pytest.raises(PipelineValidationError, match=r"task 't': timeout_s takes a number of seconds"):
        t.timeout_s = "1h"
    with pytest.raises(PipelineValidationError, match=r"task 't': retry_jitter must be a fraction"):
        t.retry_jitter = -0.5
    assert t.options.timeout_s == 30.0 and t.retry_jitter == 0.1


# -- durations: _s takes numbers, the name without _s reads strings ------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout_s": "1h"},
         r"task 't': timeout_s takes a number of seconds, got the string '1h'; pass a duration string as timeout='1h'"),
        ({"retry_delay_s": "30s"}, r"task 't': retry_delay_s takes a number of seconds.*as retry_delay='30s'"),
        ({"max_retry_delay_s": "5min"}, r"task 't': max_retry_delay_s takes a number of seconds.*as max_retry_delay='5min'"),
        ({"options": None, "retry": None, "timeout": "soon"}, r"task 't': timeout: cannot read duration 'soon'"),
        ({"timeout": "0s"}, r"task 't': timeout_s must be a number > 0"),
        ({"retry_delay": -1}, r"task 't': retry_delay: a duration must be finite and >= 0"),
        ({"max_retry_delay": "400d"}, r"task 't': max_retry_delay: a duration may be at most 31622400 s"),
    ],
)  # fmt: skip
def test_task_duration_keywords(kwargs, match):
    with pytest.raises(PipelineValidationError, match=match):
        Task("t", ht.noop, **kwargs)


def test_task_duration_strings_and_numbers():
    t = Task("t", ht.noop, timeout="1h", retry_delay="1.5s", max_retry_delay=timedelta(minutes=2))
    assert (t.timeout_s, t.retry_delay_s, t.max_retry_delay_s) == (3600.0, 1.5, 120.0)
    assert Task("u", ht.noop, timeout=90).timeout_s == 90.0  # a bare number is seconds there too
    with pytest.raises(
        PipelineValidationError, match=r"RetryPolicy: retry_delay_s takes a number of seconds"
    ):
        RetryPolicy(retry_delay_s="30s")
    with pytest.raises(PipelineValidationError, match=r"TaskOptions: timeout_s takes a number of seconds"):
        TaskOptions(timeout_s="1h")


def test_fault_tolerance_durations_read_strings_without_s_and_numbers_with_it():
    p = Pipeline("p")
    ft = p.configure_fault_tolerance(checkpoint_interval="5min", circuit_window="1min", circuit_open="90s")
    assert (ft.checkpoint_interval_s, ft.circuit_window_s, ft.circuit_open_s) == (300.0, 60.0, 90.0)
    ft = p.configure_fault_tolerance(
        checkpoint_interval_s=10, circuit_window_s=timedelta(minutes=2), circuit_open_s=15
    )
    assert (ft.checkpoint_interval_s, ft.circuit_window_s, ft.circuit_open_s) == (10.0, 120.0, 15.0)
    ft = p.configure_fault_tolerance()
    assert (ft.checkpoint_interval_s, ft.circuit_window_s, ft.circuit_open_s) == (0.0, 60.0, 30.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"circuit_window_s": "1min"},
         r"configure_fault_tolerance: circuit_window_s takes a number of seconds, got the string '1min'; "
         r"pass a duration string as circuit_window='1min'"),
        ({"circuit_open_s": "30s"}, r"circuit_open_s takes a number of seconds.*as circuit_open='30s'"),
        ({"checkpoint_interval_s": "5min"}, r"checkpoint_interval_s takes a number.*as checkpoint_interval='5min'"),
        ({"circuit_window": "1min", "circuit_window_s": 60}, r"circuit_window= and circuit_window_s= are the same option"),
        ({"circuit_open": "0s"}, r"circuit_open_s must be more than 0 seconds"),
        ({"circuit_window": "later"}, r"circuit_window: cannot read duration 'later'"),
    ],
)  # fmt: skip
def test_fault_tolerance_duration_errors_name_the_option(kwargs, match):
    p = Pipeline("p")
    kept = p.configure_fault_tolerance(max_retries_per_task=2)
    with pytest.raises(PipelineValidationError, match=match):
        p.configure_fault_tolerance(**kwargs)
    assert p.fault_tolerance is kept  # the accepted policy stays


def test_placement_wait_reads_a_string_only_without_s():
    p = Pipeline("p")
    p.configure_placement(wait_for_resources="2min")
    assert p.wait_for_resources_s == 120.0
    p.configure_placement(wait_for_resources_s=timedelta(seconds=5))
    assert p.wait_for_resources_s == 5.0
    with pytest.raises(
        PipelineValidationError, match=r"wait_for_resources_s takes a number.*as wait_for_resources='1h'"
    ):
        p.configure_placement(wait_for_resources_s="1h")
    with pytest.raises(
        PipelineValidationError, match=r"wait_for_resources= and wait_for_resources_s= are the same"
    ):
        p.configure_placement(wait_for_resources="1h", wait_for_resources_s=3600)
    with pytest.raises(PipelineValidationError, match=r"unknown placement strategy"):
        p.configure_placement(strategy="nearest", wait_for_resources="1h")
    assert (p.wait_for_resources_s, p.placement_strategy) == (5.0, None)  # nothing half-applied


def test_execute_pipeline_reads_the_wait_pair_before_it_submits():
    """``execute_pipeline`` takes ``wait_for_resources=`` too (the hint of the `_s` refusal names it),
    and refuses a bad pair before any call: the manager points at a port nothing listens on."""
    from xpipe import PipelineManager

    p = Pipeline("p")
    p.add_task(Task("t", ht.noop))
    pm = PipelineManager(coordinator="127.0.0.1:9", connect_timeout_s=0.5)
    try:
        with pytest.raises(PipelineValidationError, match=r"takes a number.*as wait_for_resources='5min'"):
            pm.execute_pipeline(p, wait_for_resources_s="5min")
        with pytest.raises(PipelineValidationError, match=r"wait_for_resources: .*'soon'"):
            pm.execute_pipeline(p, wait_for_resources="soon")
        with pytest.raises(PipelineValidationError, match=r"are the same option"):
            pm.execute_pipeline(p, wait_for_resources="5min", wait_for_resources_s=300)
    finally:
        pm.close()
