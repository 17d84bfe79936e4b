"""The stream API as the seed writes it: building, checking, planning, and start()'s checks."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import xpipe
from xpipe import DataStream, DataStreamError, StreamPipeline, StreamTask
from xpipe.streams import CodeRef, StreamPlan, StreamURI, WindowSpec


class EnrichmentStream(StreamTask):
    def process_batch(self, batch):
        return [dict(r, enriched=True) for r in batch]


class AnalyticsStream(StreamTask):
    def __init__(self, field):  # no super().__init__(): state and window must exist anyway
        self.field = field

    def process_batch(self, batch):
        self.state["seen"] = self.state.get("seen", 0) + len(batch)
        return [{"window": self.window, "total": sum(r[self.field] for r in batch)}]


def seed_pipeline():
    sp = StreamPipeline("real_time_analytics")
    data_stream = DataStream("events", source="kafka://127.0.0.1:9092/events-topic", key="user")
    enriched = sp.transform(data_stream, EnrichmentStream(), parallelism=4, buffer_size=1000)
    analytics = sp.transform(enriched, AnalyticsStream("n"), parallelism=2, window_size="5min")
    sp.output(analytics, "redis://127.0.0.1:6379/analytics-results")
    return sp, enriched, analytics


def test_the_seed_sample_builds_and_plans():
    sp, enriched, analytics = seed_pipeline()
    assert (enriched.name, analytics.name, enriched.source, analytics.key) == (
        "enrichment_stream", "analytics_stream", None, "user")  # fmt: skip
    plan = sp.plan()
    assert plan.name == "real_time_analytics"
    (source,) = plan.sources
    assert (source.stream, source.uri, source.codec, source.key_field) == (
        "events", StreamURI("kafka", "127.0.0.1", 9092, "events-topic"), "json", "user")  # fmt: skip
    first, second = plan.stages
    assert (first.name, first.input, first.parallelism, first.buffer_size, first.window) == (
        "enrichment_stream", "events", 4, 1000, None)  # fmt: skip
    assert (second.input, second.parallelism, second.window) == (
        "enrichment_stream",
        2,
        WindowSpec(300.0, 300.0),
    )
    assert second.key_field == "user"  # a stage's output keeps its input's partitioning
    assert first.task_class.import_path == f"{__name__}:EnrichmentStream"  # importable: sent by name
    assert (second.late_stream, second.dlq_stream) == ("analytics_stream.late", "analytics_stream.dlq")
    (sink,) = plan.sinks
    assert (sink.stream, str(sink.uri)) == ("analytics_stream", "redis://127.0.0.1:6379/analytics-results")


def test_the_plan_is_frozen_and_survives_json_and_pickle():
    plan = seed_pipeline()[0].plan()
    with pytest.raises(AttributeError):
        plan.name = "other"
    assert StreamPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    with pytest.raises(DataStreamError, match="stream plan is malformed: KeyError"):
        StreamPlan.from_dict({"name": "x"})


def test_a_stage_loads_a_fresh_task_with_the_users_attributes():
    sp, _, _ = seed_pipeline()
    stage = sp.plan().stages[1]
    task = stage.load_task()
    assert isinstance(task, AnalyticsStream) and (task.field, task.state, task.window) == ("n", {}, None)
    task.window = (0.0, 300.0)
    assert task.process_batch([{"n": 2}, {"n": 3}]) == [{"window": (0.0, 300.0), "total": 5}]
    assert task.state == {"seen": 2}
    assert stage.load_task().state == {}  # each instance starts from the plan, not from another's state


def test_a_task_class_that_cannot_be_imported_travels_pickled():
    factor = 3

    class Local(StreamTask):
        def __init__(self):
            self.scale = lambda x: x * factor

        def process_batch(self, batch):
            return [self.scale(x) for x in batch]

    sp = StreamPipeline("local")
    sp.output(
        sp.transform(DataStream("numbers", source="memory://numbers", codec="bytes"), Local()), "memory://out"
    )
    stage = StreamPlan.from_dict(json.loads(json.dumps(sp.plan().to_dict()))).stages[0]
    assert stage.task_class.import_path == "" and stage.task_class.pickled and stage.task_class.code_hash
    assert stage.load_task().process_batch([1, 2]) == [3, 6]
    assert stage.codec == "bytes"


def test_a_stage_whose_task_cannot_be_loaded_says_so():
    stage = seed_pipeline()[0].plan().stages[0]
    missing = dataclasses.replace(stage, task_class=CodeRef("no_such_module_here:Task"))
    with pytest.raises(
        DataStreamError,
        match="stage 'enrichment_stream': cannot load its task: SerializationError.*no_such_module_here",
    ):
        missing.load_task()
    not_a_task = dataclasses.replace(stage, task_class=CodeRef("json:dumps"))
    with pytest.raises(
        DataStreamError, match="stage 'enrichment_stream': json.dumps is not a StreamTask subclass"
    ):
        not_a_task.load_task()


def test_a_key_function_travels_with_the_plan():
    sp = StreamPipeline("keyed")
    stream = DataStream("events", source="memory://events", key=lambda r: r["user"].lower())
    sp.output(sp.transform(stream, EnrichmentStream()), "memory://out")
    plan = StreamPlan.from_dict(json.loads(json.dumps(sp.plan().to_dict())))
    assert plan.sources[0].key_field is None and plan.stages[0].key_fn is not None
    assert plan.sources[0].key_fn.load()({"user": "ADA"}) == "ada"


def test_stage_names_are_unique_and_can_be_given():
    sp = StreamPipeline("p")
    src = DataStream("events", source="memory://events")
    a = sp.transform(src, EnrichmentStream())
    b = sp.transform(a, EnrichmentStream())
    c = sp.transform(b, EnrichmentStream(), name="final")
    assert (a.name, b.name, c.name) == ("enrichment_stream", "enrichment_stream-2", "final")
    with pytest.raises(DataStreamError, match="transform\\(name='final'\\): pipeline 'p' already has"):
        sp.transform(c, EnrichmentStream(), name="final")
    with pytest.raises(DataStreamError, match="transform\\(name='events'\\)"):
        sp.transform(c, EnrichmentStream(), name="events")
    with pytest.raises(DataStreamError, match="stage name 'has space'"):
        sp.transform(c, EnrichmentStream(), name="has space")


def test_event_time_comes_from_the_stream_unless_the_stage_names_another():
    sp = StreamPipeline("p")
    src = DataStream("events", source="memory://events", time_field="ts")
    plain = sp.transform(src, EnrichmentStream())
    windowed = sp.transform(src, EnrichmentStream(), window_size="10s", slide="5s", allowed_lateness="1min")
    other = sp.transform(src, EnrichmentStream(), window_size=10, time_field="created")
    sp.output(other, "memory://o")
    stages = {stage.name: stage for stage in sp.plan().stages}
    assert stages[plain.name].window is None
    assert stages[windowed.name].window == WindowSpec(10.0, 5.0, "ts", 60.0)
    assert stages[other.name].window == WindowSpec(10.0, 10.0, "created", 0.0)


class NoProcess(StreamTask):
    pass


@pytest.mark.parametrize(
    ("call", "problem"),
    [(lambda sp, s: sp.transform(s, EnrichmentStream(), parallelism=0), "parallelism=0: must be an integer >= 1"),
     (lambda sp, s: sp.transform(s, EnrichmentStream(), parallelism=2.0), "parallelism=2.0"),
     (lambda sp, s: sp.transform(s, EnrichmentStream(), buffer_size=0), "buffer_size=0: must be an integer >= 1"),
     (lambda sp, s: sp.transform(s, EnrichmentStream(), window_size="5 fortnights"), "window_size='5 fortnights': cannot read"),
     (lambda sp, s: sp.transform(s, EnrichmentStream(), window_size="1min", slide="2min"), "slide='2min': must be"),
     (lambda sp, s: sp.transform(s, EnrichmentStream(), window_size="1min", allowed_lateness="late"),
      "allowed_lateness='late'"),
     (lambda sp, s: sp.transform(s, EnrichmentStream(), slide="1min"), "slide='1min' needs window_size="),
     (lambda sp, s: sp.transform(s, EnrichmentStream), "expected an instance of a StreamTask subclass, got type"),
     (lambda sp, s: sp.transform(s, lambda batch: batch), "expected an instance of a StreamTask subclass, got function"),
     (lambda sp, s: sp.transform(s, NoProcess()), "NoProcess does not define process_batch"),
     (lambda sp, s: sp.transform("events", EnrichmentStream()), "transform(stream=...): expected a DataStream, got str"),
     (lambda sp, s: sp.output(s, "elasticsearch://127.0.0.1:9200/idx"), "supported: kafka, redis, nats, file, memory"),
     (lambda sp, s: sp.output(s, "kafka://127.0.0.1:9092"), "names no topic"),
     (lambda sp, s: sp.transform(DataStream("events", source="memory://other"), EnrichmentStream()),
      "two different streams are named 'events'")],
)  # fmt: skip
def test_bad_arguments_are_refused_at_once_naming_argument_and_value(call, problem):
    sp = StreamPipeline("checked")
    src = DataStream("events", source="memory://events")
    sp.transform(src, EnrichmentStream())
    with pytest.raises(DataStreamError) as info:
        call(sp, src)
    assert problem in str(info.value)


def test_streams_of_another_pipeline_and_duplicate_sinks_are_refused():
    sp, enriched, _ = seed_pipeline()
    other = StreamPipeline("other")
    with pytest.raises(
        DataStreamError, match="'enrichment_stream' is the output of a stage of another pipeline"
    ):
        other.transform(enriched, EnrichmentStream())
    with pytest.raises(DataStreamError, match="already writes to redis://127.0.0.1:6379/analytics-results"):
        sp.output(enriched, "redis://127.0.0.1:6379/analytics-results")


@pytest.mark.parametrize(
    ("make", "problem"),
    [(lambda: DataStream("events", source="ftp://x/y"), "unsupported scheme 'ftp'"),
     (lambda: DataStream("events", source="memory://e", codec="avro"), "codec 'avro': expected one of 'json', 'bytes'"),
     (lambda: DataStream("events", source="memory://e", key=3), "key=3 must be a field name or a function"),
     (lambda: DataStream("events", source="memory://e", time_field=""), "time_field='' must be a non-empty"),
     (lambda: DataStream("bad name", source="memory://e"), "stream name 'bad name'"),
     (lambda: StreamPipeline(".hidden"), "stream pipeline name '.hidden'")],
)  # fmt: skip
def test_bad_streams_and_pipeline_names_are_refused(make, problem):
    with pytest.raises(DataStreamError) as info:
        make()
    assert problem in str(info.value)


def test_a_pipeline_without_stage_or_output_has_no_plan():
    sp = StreamPipeline("empty")
    with pytest.raises(DataStreamError, match="stream pipeline 'empty' has no stage"):
        sp.plan()
    sp.transform(DataStream("events", source="memory://events"), EnrichmentStream())
    with pytest.raises(DataStreamError, match="has no output; add one with output"):
        sp.start()


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [({"backpressure_strategy": "drop_all"}, "backpressure_strategy='drop_all': expected one of 'block', 'drop_oldest'"),
     ({"max_throughput_per_second": 0}, "max_throughput_per_second=0: must be a number > 0"),
     ({"auto_scaling": "yes"}, "auto_scaling='yes': must be True or False"),
     ({"manager": "127.0.0.1:7000"}, "manager='127.0.0.1:7000': expected a PipelineManager")],
)  # fmt: skip
def test_start_checks_its_arguments_first(kwargs, problem):
    sp, _, _ = seed_pipeline()
    with pytest.raises(DataStreamError) as info:
        sp.start(**kwargs)
    assert problem in str(info.value)


def test_start_with_an_unreachable_broker_says_which_before_contacting_the_cluster():
    from tests.harness import free_port

    port = free_port()  # nothing listens there
    sp = StreamPipeline("unreachable")
    sp.output(
        sp.transform(DataStream("events", source=f"kafka://127.0.0.1:{port}/events"), EnrichmentStream()),
        "file:///tmp/unreachable.jsonl",
    )
    manager = xpipe.PipelineManager(coordinator="127.0.0.1:9", connect_timeout_s=0.5)  # never contacted
    try:
        for strategy in ("block", "drop_oldest", "drop_newest"):
            with pytest.raises(DataStreamError, match=f"127.0.0.1:{port}"):
                sp.start(backpressure_strategy=strategy, max_throughput_per_second=10000, auto_scaling=True, manager=manager)
    finally:
        manager.close()


def test_a_stream_task_keeps_state_and_window_of_its_own():
    a, b = AnalyticsStream("n"), AnalyticsStream("n")
    a.state["k"] = 1
    assert b.state == {} and a.window is None
    copy = pickle.loads(pickle.dumps(a))
    assert (copy.field, copy.state, copy.window) == ("n", {}, None)  # state travels by checkpoint, not pickle
    with pytest.raises(NotImplementedError, match="NoProcess must define process_batch"):
        NoProcess().process_batch([])


def test_a_task_or_key_that_cannot_travel_is_refused_when_the_stage_is_added():
    import threading

    lock = threading.Lock()

    class Locked(StreamTask):
        def __init__(self):
            self.lock = lock

        def process_batch(self, batch):
            return batch

    sp = StreamPipeline("unshippable")
    with pytest.raises(DataStreamError, match="the attributes of Locked cannot be pickled"):
        sp.transform(DataStream("events", source="memory://events"), Locked())
    keyed = DataStream("keyed", source="memory://keyed", key=lambda r: (lock, r)[1])
    with pytest.raises(DataStreamError, match="DataStream 'keyed': key: cannot ship callable"):
        sp.transform(keyed, EnrichmentStream())


def test_building_and_planning_a_stream_pipeline_loads_no_grpc_and_no_asyncio():
    import subprocess
    import sys

    code = (
        "import sys, xpipe\n"
        "class T(xpipe.StreamTask):\n"
        "    def process_batch(self, batch): return batch\n"
        "sp = xpipe.StreamPipeline('p')\n"
        "sp.output(sp.transform(xpipe.DataStream('e', source='memory://e'), T(), window_size='1s'), 'memory://o')\n"
        "sp.plan().to_dict()\n"
        "print(sorted(m for m in ('grpc', 'asyncio', 'xpipe._client', 'xpipe._manager') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_refused_call_leaves_the_pipeline_as_it_was():
    sp, _, _ = seed_pipeline()
    before = sp.plan()
    fresh = DataStream("clicks", source="memory://clicks")
    with pytest.raises(DataStreamError, match="parallelism=0"):
        sp.transform(fresh, EnrichmentStream(), parallelism=0)
    with pytest.raises(DataStreamError, match="unsupported scheme"):
        sp.output(fresh, "ftp://127.0.0.1/x")
    assert sp.plan() == before  # "clicks" was not added as a source by the refused calls
    sp.output(fresh, "memory://clicks-copy")  # a source may go straight to a sink
    assert [s.stream for s in sp.plan().sources] == ["events", "clicks"]
    with pytest.raises(DataStreamError, match="transform\\(name='clicks'\\)"):
        sp.transform(fresh, EnrichmentStream(), name="clicks")  # a stage cannot take its input's name


def test_every_name_of_the_streams_package_is_there():
    import xpipe.streams

    assert len(set(xpipe.streams.__all__)) == len(xpipe.streams.__all__)
    for name in xpipe.streams.__all__:
        assert getattr(xpipe.streams, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        xpipe.streams.Nope  # noqa: B018
