"""Hot reload end to end: edit a task's source on disk, and the next run on real workers changes.

The embedded default (a real coordinator and worker processes) runs the pipeline; the
module lives in tmp_path, on this process's sys.path only, so the workers can run its
tasks only because hot reload ships them by value. Each wait is a poll with a deadline on
the reloader's version or error, never a fixed sleep; the reloader drops the module's
cached bytecode, so edits faster than the file system's mtime resolution still count.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest
from xpipe import PipelineExecutionError, PipelineManager

from tests.harness import Cluster, eventually

SOURCE = """
from xpipe import Task


def extract():
    return [1, 2, 3]


def transform(rows):
    return [r * 10 for r in rows]


def build():
    return [Task("extract", func=extract), Task("transform", func=transform, depends_on=["extract"])]


def build_other():
    return [Task("extract", func=extract)]
"""

RELOAD_TIMEOUT_S = 15.0


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new))


@pytest.fixture
def module(tmp_path, monkeypatch):
    name = f"hr_e2e_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(src))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def test_an_edited_task_changes_the_next_run_and_a_syntax_error_keeps_the_old_one(tmp_path, module):
    path = Path(module.__file__)
    with PipelineManager(workers=1, slots_per_worker=2, data_dir=tmp_path / "local") as pm:
        pm.pipeline("etl")(module.build)
        reloader = pm.enable_hot_reload("etl", debounce_ms=50)
        assert reloader.files == (str(path.resolve()),)
        assert pm.execute_pipeline("etl", monitor=False).outputs["transform"] == [10, 20, 30]

        _edit(path, "r * 10", "r + 100")
        eventually(lambda: reloader.version == 2, timeout_s=RELOAD_TIMEOUT_S, message="reload after the edit")
        assert pm.execute_pipeline("etl", monitor=False).outputs["transform"] == [101, 102, 103]

        _edit(path, "r + 100", "r +")  # a syntax error: version 2 stays
        eventually(
            lambda: reloader.last_error, timeout_s=RELOAD_TIMEOUT_S, message="the syntax error reported"
        )
        assert reloader.last_error.startswith(f"SyntaxError at {path}:")
        assert pm.hot_reload_status("etl").version == 2
        assert pm.execute_pipeline("etl", monitor=False).outputs["transform"] == [101, 102, 103]

        _edit(path, "r +", "r - 1")  # fixed: reloads, and the error is cleared
        eventually(lambda: reloader.version == 3, timeout_s=RELOAD_TIMEOUT_S, message="reload after the fix")
        assert reloader.last_error is None
        run_id = pm.submit("etl")
        assert pm.wait(run_id, timeout_s=60).outputs["transform"] == [0, 1, 2]


def test_disable_stops_reloading_one_pipeline_while_another_still_reloads(tmp_path, module):
    path = Path(module.__file__)
    with PipelineManager(workers=1, slots_per_worker=2, data_dir=tmp_path / "local") as pm:
        pm.pipeline("etl")(module.build)
        pm.pipeline("other")(module.build_other)
        etl = pm.enable_hot_reload("etl", debounce_ms=50)
        other = pm.enable_hot_reload("other", debounce_ms=50)
        pm.disable_hot_reload("etl")
        assert not etl.watching and other.watching

        _edit(path, "[1, 2, 3]", "[7]")
        # "other" watches the same file: its reload proves the edit was seen.
        eventually(lambda: other.version == 2, timeout_s=RELOAD_TIMEOUT_S, message="'other' reloaded")
        assert etl.version == 1
        assert pm.execute_pipeline("other", monitor=False).outputs["extract"] == [7]
        # "etl" kept the code it had; its functions still ship by value for this run
        # because "other" ships the same module, so the worker runs the old extract.
        assert pm.execute_pipeline("etl", monitor=False).outputs["transform"] == [10, 20, 30]
    assert not other.watching


def test_a_worker_that_refuses_pickled_code_refuses_hot_reloaded_tasks(tmp_path, module):
    """Hot reload ships code by value, so the code-trust rules for pickled code apply to it."""
    with Cluster(tmp_path / "cluster", workers=0) as cluster:
        cluster.add_worker("importonly", 1, ["--allow-code", "import,handler"])
        with PipelineManager(coordinator=cluster.address) as pm:
            pm.pipeline("etl")(module.build)
            pm.enable_hot_reload("etl")
            with pytest.raises(PipelineExecutionError) as info:
                pm.execute_pipeline("etl", monitor=False)
    assert info.value.error_type == "PICKLED_CODE_REFUSED" and info.value.task == "extract"
    assert "--allow-code without pickle" in str(info.value)


CACHED_SOURCE = """
from xpipe import Task


def extract():
    return [1, 2, 3]


def transform(rows):
    return [r * 10 for r in rows]


def load(rows):
    return sum(rows)


def build():
    return [Task("extract", func=extract, cache=True),
            Task("transform", func=transform, depends_on=["extract"], cache=True),
            Task("load", func=load, depends_on=["transform"], cache=True)]
"""


def test_with_the_cache_on_only_the_edited_task_and_its_dependents_rerun(tmp_path, monkeypatch):
    """Unchanged functions keep their content hash across a reload, so their cache keys hold."""
    name = f"hr_cache_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    src.mkdir()
    path = src / f"{name}.py"
    path.write_text(CACHED_SOURCE)
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    try:
        with PipelineManager(workers=1, slots_per_worker=2, data_dir=tmp_path / "local") as pm:
            pm.pipeline("etl")(module.build)
            reloader = pm.enable_hot_reload("etl", debounce_ms=50)
            first = pm.execute_pipeline("etl", monitor=False)
            assert first.outputs["load"] == 60 and not any(t.cache_hit for t in first.tasks.values())
            again = pm.execute_pipeline("etl", monitor=False)
            assert all(t.cache_hit for t in again.tasks.values()), "nothing changed: every task hits"

            _edit(path, "r * 10", "r * 100")
            eventually(lambda: reloader.version == 2, timeout_s=RELOAD_TIMEOUT_S, message="reload after the edit")
            edited = pm.execute_pipeline("etl", monitor=False)
            assert edited.outputs["load"] == 600
            hits = {n: t.cache_hit for n, t in edited.tasks.items()}
            assert hits == {"extract": True, "transform": False, "load": False}, hits
    finally:
        sys.modules.pop(name, None)
