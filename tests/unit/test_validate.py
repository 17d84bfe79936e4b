"""Validation of what enters from the wire, and the shared limits and resource names (pure, fast)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.harness import child_env
from xpipe import Pipeline, PipelineValidationError, Task
from xpipe._limits import (
    MAX_DEPENDS_ON,
    MAX_DURATION_S,
    MAX_LABELS,
    MAX_NAME_CHARS,
    finite_problem,
    normalize_resources,
    parse_quantity,
)
from xpipe._plan import parse_constraints
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._validate import check_event, check_heartbeat, check_register, validate_spec
from xpipe.worker._daemon import parse_kv, parse_resources

NOT_FINITE = [math.nan, math.inf, -math.inf]


def spec_of(**task_fields) -> pb.PipelineSpec:
    task = pb.TaskSpec(name="extract", python=pb.PythonCall(import_path="m:f"), **task_fields)
    return pb.PipelineSpec(name="p", tasks=[task])


def refused(spec: pb.PipelineSpec) -> str:
    with pytest.raises(PipelineValidationError) as info:
        validate_spec(spec)
    return str(info.value)


# --------------------------------------------------------------------------- pipeline specs


def test_the_issue_example_names_task_and_field_path():
    spec = spec_of(resources=pb.Resources(cpu_cores=math.nan))
    assert refused(spec) == "task 'extract': resources.cpu_cores is nan; must be a finite number >= 0"


@pytest.mark.parametrize("value", NOT_FINITE + [-1.0])
@pytest.mark.parametrize(
    "build, path",
    [
        (lambda v: spec_of(timeout_s=v), "timeout_s"),
        (lambda v: spec_of(retry=pb.RetryPolicy(retry_delay_s=v)), "retry.retry_delay_s"),
        (lambda v: spec_of(retry=pb.RetryPolicy(max_retry_delay_s=v)), "retry.max_retry_delay_s"),
        (lambda v: spec_of(retry=pb.RetryPolicy(jitter=v)), "retry.jitter"),
        (lambda v: spec_of(resources=pb.Resources(cpu_cores=v)), "resources.cpu_cores"),
        (lambda v: spec_of(resources=pb.Resources(custom={"lic": v})), "resources.custom['lic']"),
    ],
)
def test_task_floats_refuse_nan_inf_and_negatives(build, path, value):
    message = refused(build(value))
    assert message.startswith(f"task 'extract': {path} is ")


@pytest.mark.parametrize("value", NOT_FINITE + [-1.0])
@pytest.mark.parametrize(
    "field",
    ["wait_for_resources_s", "resource_limits", "fault_tolerance.circuit_window_s",
     "fault_tolerance.circuit_open_s", "fault_tolerance.checkpoint_interval_s"],
)  # fmt: skip
def test_pipeline_floats_refuse_nan_inf_and_negatives(field, value):
    spec = spec_of()
    if field == "resource_limits":
        spec.resource_limits.cpu_cores = value
        field = "resource_limits.cpu_cores"
    elif field.startswith("fault_tolerance."):
        setattr(spec.fault_tolerance, field.split(".")[1], value)
    else:
        setattr(spec, field, value)
    assert refused(spec).startswith(f"pipeline 'p': {field} is ")


def test_retry_delay_of_infinity_and_absurd_durations_are_refused():
    assert "retry.retry_delay_s is inf" in refused(spec_of(retry=pb.RetryPolicy(retry_delay_s=math.inf)))
    assert "the limit is" in refused(spec_of(timeout_s=MAX_DURATION_S * 2))
    assert "retry.jitter is 1.5; the limit is 1" in refused(spec_of(retry=pb.RetryPolicy(jitter=1.5)))


def test_a_million_character_task_name_is_refused_with_a_short_message():
    spec = spec_of()
    spec.tasks[0].name = "x" * 1_000_000
    message = refused(spec)
    assert f"name has 1000000 chars; the limit is {MAX_NAME_CHARS}" in message and len(message) < 300


@pytest.mark.parametrize("name", ["../../etc/passwd", "a b", "tab\there", "nul\0", "bell\x07", "x/y"])
def test_a_task_name_that_could_escape_a_directory_is_refused(name):
    # Workers write results to <artifact_dir>/<run>/<task>.<attempt>.
    spec = spec_of()
    spec.tasks[0].name = name
    assert refused(spec) == (
        f"invalid task name {name!r}: a task name is a non-empty string of at most 256 chars, "
        "without whitespace, '/' or control characters"
    )


def test_a_long_cycle_or_duplicate_is_reported_in_a_short_message():
    names = [f"t{i:03d}" + "x" * 200 for i in range(1000)]
    tasks = [pb.TaskSpec(name=n, handler=pb.HandlerCall(name="h"), depends_on=[names[i - 1]]) for i, n in enumerate(names)]
    with pytest.raises(PipelineValidationError) as info:
        validate_spec(pb.PipelineSpec(name="p", tasks=tasks))
    assert "(1001 tasks)" in str(info.value) and len(str(info.value)) < 6000
    assert len(info.value.cycle) == 1001  # the exception still carries all of it
    twice = [pb.TaskSpec(name="d" * 255, handler=pb.HandlerCall(name="h")) for _ in range(2)]
    assert len(refused(pb.PipelineSpec(name="p", tasks=twice))) < 200


def test_size_limits_on_labels_dependencies_and_commands():
    assert f"labels has {MAX_LABELS + 1} entries" in refused(
        spec_of(labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    )
    assert "labels['k'] has 2000 chars" in refused(spec_of(labels={"k": "v" * 2000}))
    many = spec_of(depends_on=[f"t{i}" for i in range(MAX_DEPENDS_ON + 1)])
    assert f"has {MAX_DEPENDS_ON + 1} dependencies" in refused(many)
    command = pb.TaskSpec(name="c", command=pb.CommandCall(argv=["echo", "a\0b"]))
    assert "command.argv[1] contains a NUL character" in refused(pb.PipelineSpec(name="p", tasks=[command]))
    command = pb.TaskSpec(name="c", command=pb.CommandCall(argv=["env"], env={"A=B": "1"}))
    assert "command.env key 'A=B'" in refused(pb.PipelineSpec(name="p", tasks=[command]))
    command = pb.TaskSpec(name="c", command=pb.CommandCall(argv=["x" * 2_000_000]))
    assert "command argv and env have 2000000 chars" in refused(pb.PipelineSpec(name="p", tasks=[command]))


def test_argument_artifact_references_and_unknown_enums_are_refused():
    spec = spec_of(args=pb.Payload(codec=pb.CODEC_PICKLE, artifact_ref="file:///etc/passwd"))
    assert "args.artifact_ref 'file:///etc/passwd' is not allowed" in refused(spec)
    assert "args.codec 99 is not a Codec value" in refused(spec_of(args=pb.Payload(codec=99)))
    assert "retry.backoff 7 is not a RetryBackoff value" in refused(spec_of(retry=pb.RetryPolicy(backoff=7)))


def test_a_valid_spec_passes_and_a_restored_one_skips_limits_tightened_since():
    spec = spec_of(timeout_s=5, retry=pb.RetryPolicy(retry_delay_s=1, jitter=0.5), labels={"a": "b"})
    assert validate_spec(spec) == ["extract"]
    spec.tasks[0].labels["v"] = "x" * 5000  # accepted under an older, looser limit
    refused(spec)
    assert validate_spec(spec, restored=True) == ["extract"]


# --------------------------------------------------------------------------- worker messages


def register(**fields) -> worker_pb2.Register:
    return worker_pb2.Register(**{"worker_id": "w", "slots": 2, **fields})


@pytest.mark.parametrize("value", NOT_FINITE + [-1.0])
def test_register_refuses_bad_resources_naming_the_field(value):
    assert check_register(register(resources=pb.Resources(cpu_cores=value))).startswith(
        "Register.resources.cpu_cores is "
    )
    assert check_register(register(resources=pb.Resources(custom={"g": value}))).startswith(
        "Register.resources.custom['g'] is "
    )


def test_register_refuses_bad_slots_names_and_recent_events():
    assert check_register(register()) == ""
    assert check_register(register(slots=0)) == "Register.slots must be between 1 and 4096, got 0"
    assert "Register.worker_id has 300 chars" in check_register(register(worker_id="w" * 300))
    assert check_register(register(worker_id="")) == "Register.worker_id is empty"
    bad = worker_pb2.TaskEvent(at=math.nan, started=worker_pb2.Started())
    assert check_register(register(recent=[bad])) == "Register.recent: TaskEvent.at is nan; must be a finite number >= 0"


def test_heartbeat_metrics_must_be_finite_and_not_negative():
    ok = worker_pb2.Heartbeat(metrics=worker_pb2.WorkerMetrics(cpu_percent=50, memory_percent=10, load_1m=2))
    assert check_heartbeat(ok) == ""
    nan = worker_pb2.Heartbeat(metrics=worker_pb2.WorkerMetrics(cpu_percent=math.nan))
    assert check_heartbeat(nan) == "Heartbeat.metrics.cpu_percent is nan; must be a finite number >= 0"
    negative = worker_pb2.Heartbeat(metrics=worker_pb2.WorkerMetrics(load_1m=-3))
    assert check_heartbeat(negative) == "Heartbeat.metrics.load_1m is -3.0; must be >= 0"
    # A counter rounding a little over 100% is a measurement; a real worker must not be refused.
    assert check_heartbeat(worker_pb2.Heartbeat(metrics=worker_pb2.WorkerMetrics(cpu_percent=100.4))) == ""


def test_task_event_timestamps_and_error_resources_are_checked():
    ok = worker_pb2.TaskEvent(at=1e9, started_at=1e9 - 1, succeeded=worker_pb2.Succeeded())
    assert check_event(ok) == ""
    assert check_event(worker_pb2.TaskEvent(at=math.inf)).startswith("TaskEvent.at is inf")
    assert check_event(worker_pb2.TaskEvent(at=1, started_at=math.nan)).startswith("TaskEvent.started_at is nan")
    failed = worker_pb2.TaskEvent(
        at=1, failed=worker_pb2.Failed(error=pb.TaskError(required_resources=pb.Resources(cpu_cores=-2)))
    )
    assert check_event(failed) == "TaskEvent.failed.error.required_resources.cpu_cores is -2.0; must be >= 0"


# --------------------------------------------------------------------------- one table of names


def test_resource_names_are_the_same_in_the_sdk_the_plans_and_the_worker_cli():
    sdk = Task("t", print, resource_requirements={"cpu": 2, "memory": "1Gi", "gpu": 1, "lic": 3}).to_proto({})
    assert sdk.resources.cpu_cores == 2 and sdk.resources.memory_bytes == 2**30 and sdk.resources.gpu == 1
    assert dict(sdk.resources.custom) == {"lic": 3.0}  # "cpu" is no longer a custom resource
    worker = parse_resources("cpu=2,memory=1Gi,gpu=1,lic=3", pb.Resources(cpu_cores=64))
    assert worker == sdk.resources
    assert parse_resources("cpu_cores=2,memory_gb=1", pb.Resources()) == pb.Resources(cpu_cores=2, memory_bytes=2**30)
    assert parse_constraints({"cpu": 4, "memory_mb": 1}) == {"cpu_cores": 4.0, "memory_bytes": float(2**20)}


def test_a_resource_given_twice_under_two_names_is_refused():
    with pytest.raises(PipelineValidationError, match=r"gives cpu twice \('cpu' and 'cpu_cores'\); give one"):
        Task("t", print, resource_requirements={"cpu": 1, "cpu_cores": 2})
    with pytest.raises(ValueError, match="gives memory twice"):
        parse_resources("memory=1Gi,memory_mb=5", pb.Resources())


@pytest.mark.parametrize("text", ["cpu=inf", "cpu=nan", "cpu=-1", "cpu=lots", "gpu=0.5", "memory=16Qi", "cpu=1e300"])
def test_worker_resources_flag_refuses_garbage_naming_the_flag_and_value(text):
    with pytest.raises(ValueError) as info:
        parse_resources(text, pb.Resources())
    assert str(info.value).startswith(f"bad --resources {text!r}: [")


def test_worker_labels_flag_keeps_to_the_limits():
    assert parse_kv("zone=a, disk = ssd", "--labels") == {"zone": "a", "disk": "ssd"}
    with pytest.raises(ValueError, match="the limit is 64"):
        parse_kv(",".join(f"k{i}=v" for i in range(65)), "--labels")
    with pytest.raises(ValueError, match="values 1024"):
        parse_kv("k=" + "v" * 2000, "--labels")


def test_xpipe_worker_exits_at_once_on_infinite_cpu_with_a_message_not_a_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "xpipe.worker", "--coordinator", "127.0.0.1:9", "--resources", "cpu=inf"],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: bad --resources 'cpu=inf': ['cpu'] is inf; must be a finite number >= 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_xpipe_worker_exits_at_once_when_its_install_dir_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = subprocess.run(
        [sys.executable, "-m", "xpipe.worker", "--coordinator", "127.0.0.1:9", "--allow-install",
         "--install-dir", str(blocker / "packages")],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert f"error: --install-dir '{blocker / 'packages'}' cannot be created: Not a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_sdk_checks_the_same_limits_early():
    with pytest.raises(PipelineValidationError, match="at most 256 chars"):
        Task("x" * 300, print)
    with pytest.raises(PipelineValidationError, match="labels has 65 entries; the limit is 64"):
        Task("t", print, labels={f"k{i}": "v" for i in range(65)})
    with pytest.raises(PipelineValidationError, match=r"timeout_s must be a number > 0 \(at most 31622400\)"):
        Task("t", print, timeout_s=MAX_DURATION_S + 1)
    with pytest.raises(PipelineValidationError, match="NUL"):
        Task.command("c", ["echo", "a\0"])


def test_leaf_helpers():
    assert parse_quantity("16Gi") == 16 * 2**30 and parse_quantity("2G") == 2e9 and parse_quantity("512") == 512
    with pytest.raises(ValueError, match="not a memory quantity"):
        parse_quantity("16 apples")
    assert finite_problem(1.0) == "" and finite_problem(0.0, low_open=True) == "is 0.0; must be > 0"
    assert finite_problem(-math.inf) == "is -inf; must be a finite number >= 0"
    assert normalize_resources({"gpu": 2}).gpu == 2 and normalize_resources({}).cpu_cores is None
    with pytest.raises(ValueError, match="must be a finite number >= 0, got True"):
        normalize_resources({"cpu": True})


def test_fault_tolerance_durations_keep_to_the_same_limit():
    p = Pipeline("p")
    p.configure_fault_tolerance(circuit_window_s=MAX_DURATION_S)
    with pytest.raises(PipelineValidationError, match=r"circuit_window_s: a duration may be at most 31622400 s"):
        p.configure_fault_tolerance(circuit_window_s=MAX_DURATION_S + 1)
