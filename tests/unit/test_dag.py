"""The pipeline model (xpipe._dag): the seed's forms, validation, DataFlow, to_proto, graphs."""

from __future__ import annotations

import math
import pickle

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe import _codec, _handlers
from xpipe._callables import load_callable, load_pickled
from xpipe._dag import DataFlow, Pipeline, Task, pipeline, task, validate_graph
from xpipe._proto import common_pb2
from xpipe.errors import PipelineValidationError, SerializationError


def extract_data_func():
    return [1, 2, 3]


def transform_data_func(rows):
    return [r * 10 for r in rows]


def load_data_func(rows):
    return sum(rows)


def combine(a, b, *, scale=1, extra=None):
    return (a + b) * scale, extra


# -- the seed's forms ----------------------------------------------------------------------


def test_seed_linear_pipeline():
    pipeline_ = Pipeline("data_processing")
    extract_task = Task("extract", extract_data_func)
    transform_task = Task("transform", transform_data_func, depends_on=[extract_task])
    load_task = Task("load", load_data_func, depends_on=[transform_task])
    pipeline_.add_tasks([extract_task, transform_task, load_task])

    assert list(pipeline_.tasks) == ["extract", "transform", "load"]
    assert load_task.depends_on == ["transform"]
    assert pipeline_.validate() == ["extract", "transform", "load"]
    assert len(pipeline_) == 3 and "load" in pipeline_ and load_task in pipeline_
    assert [t.name for t in pipeline_] == ["extract", "transform", "load"]
    assert pipeline_["transform"] is transform_task
    assert transform_task(extract_task()) == [10, 20, 30]  # still plain callables
    assert "data_processing" in repr(pipeline_) and "transform" in repr(pipeline_)


def test_seed_fan_out_fan_in_orders_every_dependency_first():
    p = Pipeline("ml_training")
    ingest = Task("ingest", extract_data_func)
    validate = Task("validate", transform_data_func, depends_on=[ingest])
    features = Task("features", transform_data_func, depends_on=[validate])
    models = [Task(f"train_model_{x}", load_data_func, depends_on=[features]) for x in "abc"]
    evaluate = Task("evaluate", combine, depends_on=models)
    deploy = Task("deploy", load_data_func, depends_on=[evaluate])
    # Added out of order: the pipeline accepts forward references and sorts them.
    p.add_tasks([deploy, evaluate, *models, features, validate, ingest])
    order = p.validate()
    assert order.index("ingest") < order.index("validate") < order.index("features")
    assert all(order.index("features") < order.index(m.name) < order.index("evaluate") for m in models)
    assert order[-1] == "deploy"
    assert evaluate.depends_on == ["train_model_a", "train_model_b", "train_model_c"]


class DistributedDataProcessor(Task):
    def __init__(self, depends_on=("partition",)):
        # The seed's line plus its one missing depends_on (a fan-out maps over its upstream).
        super().__init__("process_partition", depends_on=depends_on)
        self.partitioning_strategy = "by_date"
        self.parallelism = 20

    def process_partition(self, partition_data):
        return [x * self.parallelism for x in partition_data]


class RunOverride(Task):
    def __init__(self, name):
        super().__init__(name, depends_on=["partition"])

    def run(self, data):
        return f"{self.name}:{data}"


def test_seed_task_subclass_without_func_runs_method_named_like_the_task():
    processor = DistributedDataProcessor()
    assert processor.kind == "python" and processor.parallelism == 20
    assert processor([1, 2]) == [20, 40]
    p = Pipeline("large_scale_etl")
    p.add_tasks(
        [
            Task("partition", extract_data_func),
            processor,
            Task("aggregate", load_data_func, depends_on=[processor]),
        ]
    )
    spec = p.to_proto()
    sent = spec.tasks[1]
    assert sent.map.parallelism == 20 and sent.map.strategy == "by_date"
    assert sent.python.import_path == "" and sent.python.code_hash
    blobs = {blob.code_hash: blob.data for blob in spec.code}
    shipped = load_pickled(blobs[sent.python.code_hash])  # what a worker gets
    assert shipped([1]) == [20]
    # The shipped object re-resolved its own method rather than carrying a stale copy.
    assert shipped.__self__.func.__self__ is shipped.__self__


def test_seed_subclass_without_depends_on_is_refused_naming_the_fix():
    p = Pipeline("large_scale_etl")
    p.add_tasks([Task("partition", extract_data_func), DistributedDataProcessor(depends_on=())])
    with pytest.raises(PipelineValidationError, match="task 'process_partition': depends_on is empty"):
        p.to_proto()


def test_task_subclass_overriding_run_uses_run():
    t = RunOverride("custom")
    assert t.func == t.run and t("x") == "custom:x"
    code: dict[str, bytes] = {}
    spec = t.to_proto(code)
    assert load_pickled(code[spec.python.code_hash])("y") == "custom:y"
    copy = pickle.loads(cloudpickle.dumps(t))
    assert copy("z") == "custom:z"


def test_task_without_func_and_without_method_is_refused():
    class Empty(Task):
        pass

    with pytest.raises(PipelineValidationError, match="task 'lonely' has no function"):
        Empty("lonely")
    with pytest.raises(PipelineValidationError, match="task 'bare' has no function"):
        Task("bare")
    # A name matching a Task method is not mistaken for the task's own method.
    with pytest.raises(PipelineValidationError, match="task 'to_proto' has no function"):
        Empty("to_proto")


def test_seed_nested_decorator_form():
    @pipeline("user_analytics")
    def create_user_analytics_pipeline():
        """Create user analytics pipeline with decorators."""

        @task("extract_users")
        def extract_user_data():
            return ["ann", "bob"]

        @task("analyze_behavior", depends_on=["extract_users"])
        def analyze_user_behavior(user_data):
            return len(user_data)

        @task("generate_insights", depends_on=["analyze_behavior"])
        def generate_insights(behavior_data):
            return {"users": behavior_data}

        return [extract_user_data, analyze_user_behavior, generate_insights]

    p = create_user_analytics_pipeline
    assert isinstance(p, Pipeline) and p.name == "user_analytics"
    assert p.description == "Create user analytics pipeline with decorators."
    assert p.validate() == ["extract_users", "analyze_behavior", "generate_insights"]
    analyze = p["analyze_behavior"]
    assert analyze.__name__ == "analyze_user_behavior" and analyze(["x"]) == 1
    spec = p.to_proto()
    assert len(spec.code) == 3  # nested functions are not importable: all pickled


def test_pipeline_task_decorator_adds_to_the_pipeline():
    resilient = Pipeline("resilient_etl")

    @resilient.task("data_extraction", max_retries=3)
    def extract_external_data():
        """Fetch rows."""
        return [1]

    @resilient.task
    def summarise(rows):
        return len(rows)

    @resilient.task(depends_on=[extract_external_data])
    def check(rows):
        return bool(rows)

    assert list(resilient.tasks) == ["data_extraction", "summarise", "check"]
    assert extract_external_data.max_retries == 3 and extract_external_data.__doc__ == "Fetch rows."
    assert check.depends_on == ["data_extraction"]
    assert extract_external_data() == [1]


def test_task_decorator_forms():
    @task
    def bare(x):
        return x + 1

    @task()
    def empty_parens(x):
        return x

    @task("named", depends_on="bare", timeout_s=5)
    def other(x):
        return x

    assert (bare.name, empty_parens.name, other.name) == ("bare", "empty_parens", "named")
    assert other.depends_on == ["bare"] and other.timeout_s == 5.0
    assert bare(1) == 2 and bare.__wrapped__(1) == 2
    assert isinstance(bare, Task) and bare.kind == "python"


def test_task_decorator_errors():
    with pytest.raises(PipelineValidationError, match="@task name must be a string, got 3"):
        task(3)
    with pytest.raises(PipelineValidationError, match="@task must decorate a function, got 42"):
        task("x")(42)
    with pytest.raises(PipelineValidationError, match="@task must decorate a function"):
        task("again")(Task("t", extract_data_func))
    with pytest.raises(PipelineValidationError, match="task 'neg': max_retries"):
        task("neg", max_retries=-1)(extract_data_func)


def test_pipeline_decorator_accepts_a_pipeline_a_single_task_and_bare_use():
    @pipeline("from_pipeline")
    def build():
        inner = Pipeline("inner", description="inner pipeline")
        inner.add_task(Task("one", extract_data_func))
        return inner

    assert build.name == "from_pipeline" and list(build.tasks) == ["one"]
    assert build.description == "inner pipeline"

    @pipeline("single")
    def single():
        return Task("only", extract_data_func)

    assert list(single.tasks) == ["only"]

    @pipeline
    def named_after_me():
        return (Task("t", extract_data_func),)

    assert named_after_me.name == "named_after_me"


# -- pipeline decorator and container errors ---------------------------------------------------


def test_pipeline_decorator_returning_none_is_refused():
    with pytest.raises(PipelineValidationError, match="returned None"):

        @pipeline("customer_data_processing")
        def customer_pipeline():
            @task("extract_customer_data")
            def extract_customers():
                return []

    # (the seed's example forgets the return; we say so instead of building nothing)


def test_pipeline_decorator_non_task_item_is_named():
    def plain_function():
        return 1

    with pytest.raises(PipelineValidationError, match="plain_function.*position 1"):

        @pipeline("p")
        def build():
            return [Task("a", extract_data_func), plain_function]


@pytest.mark.parametrize("returned", [42, "abc", {"a": 1}])
def test_pipeline_decorator_non_list_result_is_refused(returned):
    with pytest.raises(PipelineValidationError, match="return the list of its tasks"):
        pipeline("p")(lambda: returned)


def test_pipeline_decorator_validates_the_graph():
    with pytest.raises(PipelineValidationError, match="unknown task 'missing'"):
        pipeline("p")(lambda: [Task("a", extract_data_func, depends_on=["missing"])])


def test_pipeline_decorator_bad_name():
    with pytest.raises(PipelineValidationError, match="invalid pipeline name"):
        pipeline("")


def test_add_tasks_duplicate_adds_nothing_from_that_call():
    p = Pipeline("p")
    p.add_task(Task("a", extract_data_func))
    with pytest.raises(PipelineValidationError, match="duplicate task name 'b'"):
        p.add_tasks(
            [Task("c", extract_data_func), Task("b", extract_data_func), Task("b", extract_data_func)]
        )
    assert list(p.tasks) == ["a"]
    with pytest.raises(PipelineValidationError, match="duplicate task name 'a'"):
        p.add_task(Task("a", load_data_func))
    assert len(p) == 1


def test_add_non_task_is_refused_and_nothing_is_added():
    p = Pipeline("p")
    with pytest.raises(PipelineValidationError, match="cannot add 'oops' \\(str\\); expected a Task"):
        p.add_tasks([Task("a", extract_data_func), "oops"])
    assert len(p) == 0


def test_tasks_property_is_a_copy():
    p = Pipeline("p")
    p.add_task(Task("a", extract_data_func))
    p.tasks["b"] = Task("b", extract_data_func)
    assert list(p.tasks) == ["a"]


def test_getitem_missing_task_names_it():
    p = Pipeline("p")
    with pytest.raises(KeyError, match="pipeline 'p' has no task 'x'"):
        p["x"]


@pytest.mark.parametrize("name", ["", "   ", "a/b", None])
def test_bad_pipeline_name(name):
    with pytest.raises(PipelineValidationError, match="invalid pipeline name"):
        Pipeline(name)


def test_bad_pipeline_description():
    with pytest.raises(PipelineValidationError, match="description must be a string"):
        Pipeline("p", description=3)


def test_empty_pipeline_does_not_validate():
    with pytest.raises(PipelineValidationError, match="pipeline 'p' has no tasks"):
        Pipeline("p").validate()
    with pytest.raises(PipelineValidationError, match="has no tasks"):
        Pipeline("p").to_proto()


def test_pipeline_unknown_dependency_and_cycle_are_named():
    p = Pipeline("p")
    p.add_tasks([Task("a", extract_data_func), Task("b", load_data_func, depends_on=["x"])])
    with pytest.raises(
        PipelineValidationError, match="pipeline 'p': task 'b' depends on unknown task 'x'"
    ) as info:
        p.to_proto()
    assert info.value.unknown == ["x"]

    q = Pipeline("q")
    q.add_tasks(
        [
            Task("a", load_data_func, depends_on=["c"]),
            Task("b", load_data_func, depends_on=["a"]),
            Task("c", load_data_func, depends_on=["b"]),
        ]
    )
    with pytest.raises(PipelineValidationError, match="cycle: a -> b -> c -> a") as info:
        q.validate()
    assert info.value.cycle == ["a", "b", "c", "a"]


# -- Task construction errors ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "has space", "tab\there", "a/b", None, 7])
def test_bad_task_name(name):
    with pytest.raises(PipelineValidationError, match="invalid task name"):
        Task(name, extract_data_func)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"func": 42}, "func"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"retry_delay_s": -0.1}, "retry_delay_s"),
        ({"retry_delay_s": math.nan}, "retry_delay_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -3}, "timeout_s"),
        ({"timeout_s": "10"}, "timeout_s"),
        ({"priority": 2**40}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"resource_requirements": {"cpu_cores": -1}}, "resource_requirements"),
        ({"resource_requirements": {"cpu_cores": "4"}}, "resource_requirements"),
        ({"resource_requirements": {"gpu": 0.5}}, "resource_requirements"),
        ({"resource_requirements": {"memory_gb": 2.0**40}}, "resource_requirements"),
        ({"resource_requirements": {"cpu_cores": math.inf}}, "resource_requirements"),
        ({"resource_requirements": {"memory_mb": 1, "memory_gb": 1}}, "resource_requirements"),
        ({"resource_requirements": {1: 2}}, "resource_requirements"),
        ({"resource_requirements": ["cpu_cores"]}, "resource_requirements"),
        ({"labels": {"team": 1}}, "labels"),
        ({"labels": "team"}, "labels"),
        ({"depends_on": [3]}, "depends_on"),
        ({"depends_on": ["a", "a"]}, "depends_on"),
        ({"depends_on": 5}, "depends_on"),
        ({"args": "abc"}, "args"),
        ({"args": (DataFlow("a"),)}, "args"),
        ({"kwargs": [("a", 1)]}, "kwargs"),
        ({"kwargs": {1: "a"}}, "kwargs"),
    ],
)
def test_bad_task_field_names_task_and_field(options, field):
    options = dict(options)
    func = options.pop("func", extract_data_func)
    with pytest.raises(PipelineValidationError, match=f"task 'job': {field} "):
        Task("job", func, **options)


def test_task_depending_on_itself_is_refused():
    with pytest.raises(PipelineValidationError, match="task 'a' depends on itself") as info:
        Task("a", extract_data_func, depends_on=["a"])
    assert info.value.cycle == ["a", "a"]


def test_command_task():
    t = Task.command(
        "sort", ["sort", "-n", "in.txt"], env={"LC_ALL": "C"}, cwd="/tmp", depends_on=["a"], max_retries=2
    )
    assert t.kind == "command" and t.func is None
    assert (t.argv, t.env, t.cwd, t.depends_on, t.max_retries) == (
        ["sort", "-n", "in.txt"],
        {"LC_ALL": "C"},
        "/tmp",
        ["a"],
        2,
    )
    with pytest.raises(TypeError, match="command task 'sort' runs on a worker"):
        t()
    assert "sort -n in.txt" in repr(t)


@pytest.mark.parametrize(
    ("argv", "options", "field"),
    [
        ([], {}, "argv"),
        ("ls -l", {}, "argv"),
        (["ls", 3], {}, "argv"),
        (["ls"], {"env": {"A": 1}}, "env"),
        (["ls"], {"cwd": 3}, "cwd"),
        (["ls"], {"timeout_s": -1}, "timeout_s"),
    ],
)
def test_bad_command_task(argv, options, field):
    with pytest.raises(PipelineValidationError, match=f"task 'cmd': {field} "):
        Task.command("cmd", argv, **options)


def test_unknown_option_to_command_or_handler_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected option.*'retries'"):
        Task.command("cmd", ["ls"], retries=3)
    with pytest.raises(TypeError, match="unexpected option.*'func'"):
        Task.handler("h", "resize", func=print)


def test_handler_task_calls_the_registered_handler_locally(monkeypatch):
    monkeypatch.setattr(_handlers, "_registry", {})
    _handlers.handler("resize")(lambda image, width=1: image * width)
    t = Task.handler("shrink", "resize", depends_on=["load"], kwargs={"width": 2})
    assert t.kind == "handler" and t.handler_name == "resize"
    assert t("ab", width=3) == "ababab"
    assert "handler 'resize'" in repr(t)
    with pytest.raises(PipelineValidationError, match="task 'h': handler_name "):
        Task.handler("h", "")
    with pytest.raises(KeyError, match="no handler named 'missing'"):
        Task.handler("h", "missing")()


# -- DataFlow -------------------------------------------------------------------------------


def test_dataflow_bindings_order_tasks_but_are_not_positional():
    users = Task("users", extract_data_func)
    orders = Task("orders", extract_data_func)
    join = Task(
        "join",
        combine,
        depends_on=[users],
        kwargs={"b": DataFlow(orders, "rows"), "extra": DataFlow("users"), "scale": 2},
    )
    assert join.depends_on == ["users"]
    assert join.upstream == ["users", "orders"]
    assert join.flows == {"b": DataFlow("orders", "rows"), "extra": DataFlow("users")}
    p = Pipeline("p")
    p.add_tasks([join, users, orders])  # join first: orders must still come before it
    order = p.validate()
    assert order.index("orders") < order.index("join") and order.index("users") < order.index("join")
    spec = join.to_proto({})
    assert list(spec.depends_on) == ["users"]
    assert [(f.source_task, f.key, f.parameter) for f in spec.flows] == [
        ("orders", "rows", "b"),
        ("users", "", "extra"),
    ]
    assert _codec.decode(spec.args) == ((), {"scale": 2})


def test_dataflow_from_unknown_task_is_an_unknown_dependency():
    p = Pipeline("p")
    p.add_task(Task("a", combine, kwargs={"b": DataFlow("ghost")}))
    with pytest.raises(PipelineValidationError, match="depends on unknown task 'ghost'"):
        p.validate()


def test_dataflow_value_semantics_and_errors():
    assert DataFlow("a", "k") == DataFlow(Task("a", extract_data_func), "k")
    assert len({DataFlow("a"), DataFlow("a"), DataFlow("a", "k")}) == 2
    assert repr(DataFlow("a", "k")) == "DataFlow('a', 'k')" and repr(DataFlow("a")) == "DataFlow('a')"
    assert DataFlow("a") != "a"
    with pytest.raises(PipelineValidationError, match="DataFlow source must be a Task or a task name"):
        DataFlow(3)
    with pytest.raises(PipelineValidationError, match="DataFlow source"):
        DataFlow("has space")
    with pytest.raises(PipelineValidationError, match="DataFlow key must be a string"):
        DataFlow("a", 0)


# -- to_proto -------------------------------------------------------------------------------


def test_to_proto_round_trip():
    shared = lambda rows: len(rows)  # noqa: E731 - one lambda used twice: one code blob
    p = Pipeline("etl", description="d")
    p.add_tasks(
        [
            Task(
                "extract",
                extract_data_func,
                max_retries=3,
                retry_delay_s=1.5,
                timeout_s=30,
                resource_requirements={"cpu_cores": 4, "memory_mb": 2048, "gpu": 1, "ssd": 1},
                labels={"team": "data"},
                priority=7,
            ),
            Task("combine", combine, depends_on=["extract"], args=(5,), kwargs={"scale": 3}),
            Task("count_a", shared, depends_on=["extract"]),
            Task("count_b", shared, depends_on=["extract"]),
            Task.command("archive", ["tar", "czf", "out.tgz", "."], env={"X": "1"}, cwd="/data"),
            Task.handler("thumbnail", "resize", depends_on=["extract"], args=(64,)),
            Task("big", load_data_func, resource_requirements={"memory_gb": 2}),
        ]
    )
    wire = p.to_proto(retry_on_failure=False).SerializeToString()
    spec = common_pb2.PipelineSpec.FromString(wire)

    assert spec.name == "etl" and spec.retry_on_failure is False
    assert [t.name for t in spec.tasks] == [
        "extract",
        "combine",
        "count_a",
        "count_b",
        "archive",
        "thumbnail",
        "big",
    ]
    extract, comb, count_a, count_b, archive, thumb, big = spec.tasks

    assert extract.WhichOneof("kind") == "python"
    assert extract.python.import_path == f"{__name__}:extract_data_func" and extract.python.code_hash == ""
    assert load_callable(extract.python.import_path)() == [1, 2, 3]
    assert (extract.retry.max_retries, extract.retry.retry_delay_s, extract.timeout_s) == (3, 1.5, 30.0)
    assert extract.resources.cpu_cores == 4 and extract.resources.memory_bytes == 2048 * 2**20
    assert extract.resources.gpu == 1 and dict(extract.resources.custom) == {"ssd": 1.0}
    assert dict(extract.labels) == {"team": "data"} and extract.priority == 7
    assert not extract.HasField("args")

    assert list(comb.depends_on) == ["extract"]
    args, kwargs = _codec.decode(comb.args)
    assert (args, kwargs) == ((5,), {"scale": 3})
    assert load_callable(comb.python.import_path)(2, *args, **kwargs) == (21, None)
    assert comb.timeout_s == 0 and not comb.HasField("resources")

    assert count_a.python.code_hash == count_b.python.code_hash != ""
    assert len(spec.code) == 1 and spec.code[0].code_hash == count_a.python.code_hash
    assert load_pickled(spec.code[0].data)([1, 2]) == 2

    assert archive.WhichOneof("kind") == "command"
    assert list(archive.command.argv) == ["tar", "czf", "out.tgz", "."]
    assert dict(archive.command.env) == {"X": "1"} and archive.command.cwd == "/data"

    assert thumb.WhichOneof("kind") == "handler" and thumb.handler.name == "resize"
    assert _codec.decode(thumb.args) == ((64,), {})
    assert big.resources.memory_bytes == 2 * 2**30


def test_to_proto_unserialisable_argument_names_the_task():
    t = Task("gen", combine, args=((x for x in range(3)),))
    with pytest.raises(SerializationError, match="arguments of task 'gen'"):
        t.to_proto({})


def test_option_assigned_after_construction_is_checked_like_the_constructor():
    t = Task("a", extract_data_func)
    with pytest.raises(PipelineValidationError, match="task 'a': max_retries must be an int >= 0"):
        t.max_retries = -1
    assert t.max_retries == 0 and t.retry_policy.max_retries is None  # unchanged
    t.max_retries = 4
    assert t.to_proto({}).retry.max_retries == 4


def test_task_repr_names_task_and_function():
    t = Task("b", load_data_func, depends_on=["a"])
    text = repr(t)
    assert "'b'" in text and "load_data_func" in text and "['a']" in text


# -- validate_graph -------------------------------------------------------------------------


def test_validate_graph_keeps_names_order_when_possible():
    assert validate_graph(["a", "b", "c"], {"b": ["a"]}) == ["a", "b", "c"]
    # c is ready at once but a comes first in names; b waits for c.
    assert validate_graph(["a", "b", "c"], {"b": ["c"]}) == ["a", "c", "b"]
    assert validate_graph(["z", "y", "x"], {"z": ["x"], "y": ["x"]}) == ["x", "z", "y"]


def test_validate_graph_errors_name_the_problem():
    with pytest.raises(PipelineValidationError, match="no tasks"):
        validate_graph([], {})
    with pytest.raises(PipelineValidationError, match="duplicate task name 'a'"):
        validate_graph(["a", "b", "a"], {})
    with pytest.raises(PipelineValidationError, match="invalid task name 'b c'"):
        validate_graph(["a", "b c"], {})
    with pytest.raises(PipelineValidationError, match="invalid task name 'x/y'"):
        validate_graph(["x/y"], {})
    with pytest.raises(PipelineValidationError, match="invalid task name ''"):
        validate_graph(["a", ""], {})
    with pytest.raises(PipelineValidationError, match="invalid task name 3"):
        validate_graph(["a", 3], {})
    with pytest.raises(PipelineValidationError, match="invalid task name \\['a'\\]"):
        validate_graph(["a", ["a"]], {})
    with pytest.raises(PipelineValidationError, match="task 'a' depends on itself") as info:
        validate_graph(["a", "b"], {"b": ["a"], "a": ["a"]})
    assert info.value.cycle == ["a", "a"]


def test_validate_graph_unknown_dependencies_are_all_listed():
    with pytest.raises(PipelineValidationError) as info:
        validate_graph(["a", "b", "c"], {"b": ["x", "a"], "c": ["y", "x", 5]})
    message = str(info.value)
    assert message.startswith("task 'b' depends on unknown task 'x'")
    assert "and 3 more unknown dependencies" in message
    assert info.value.unknown == ["x", "y", "5"]


def test_validate_graph_cycle_is_named_in_order():
    with pytest.raises(PipelineValidationError, match="cycle: a -> b -> c -> a") as info:
        validate_graph(["a", "b", "c", "d"], {"a": ["c"], "b": ["a"], "c": ["b"], "d": ["c"]})
    assert info.value.cycle == ["a", "b", "c", "a"]
    # A downstream task of a cycle is not reported as part of it.
    with pytest.raises(PipelineValidationError) as info:
        validate_graph(["down", "p", "q"], {"down": ["q"], "p": ["q"], "q": ["p"]})
    assert info.value.cycle == ["p", "q", "p"]


@st.composite
def random_dags(draw):
    """(names, deps, edges): edges only go from lower to higher index, names shuffled."""
    count = draw(st.integers(min_value=1, max_value=40))
    pairs = draw(
        st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count - 1)), max_size=count * 3)
    )
    edges = {(min(a, b), max(a, b)) for a, b in pairs if a != b}  # (dep, dependent)
    labels = draw(st.permutations(range(count)))
    name = [f"t{labels[i]}" for i in range(count)]
    deps: dict[str, list[str]] = {}
    for dep, dependent in sorted(edges):
        deps.setdefault(name[dependent], []).append(name[dep])
    names = list(draw(st.permutations(name)))
    return names, deps


@settings(max_examples=150, deadline=None)
@given(random_dags())
def test_property_topological_order_puts_dependencies_first(graph):
    names, deps = graph
    order = validate_graph(names, deps)
    assert sorted(order) == sorted(names)
    position = {n: i for i, n in enumerate(order)}
    for dependent, task_deps in deps.items():
        for dep in task_deps:
            assert position[dep] < position[dependent]


@settings(max_examples=150, deadline=None)
@given(random_dags(), st.data())
def test_property_injected_back_edge_reports_a_real_cycle(graph, data):
    names, deps = graph
    if len(names) < 2:
        names = names + ["extra"]
    low, high = sorted(data.draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True)))
    deps = {k: list(v) for k, v in deps.items()}
    # high depends on low, and low depends on high: a cycle, whatever else is there.
    if low not in deps.get(high, []):
        deps.setdefault(high, []).append(low)
    deps.setdefault(low, []).append(high)
    with pytest.raises(PipelineValidationError) as info:
        validate_graph(names, deps)
    cycle = info.value.cycle
    assert len(cycle) >= 3 and cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1  # a simple cycle
    for before, after in zip(cycle[:-1], cycle[1:], strict=True):
        assert before in deps.get(after, []), (before, after, deps)
    assert " -> ".join(cycle) in str(info.value)
