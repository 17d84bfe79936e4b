"""Hot reload without a cluster: the real watcher on real files, and content hashes.

The manager points at a port nothing listens on: hot reload needs no coordinator, and
nothing here reaches one. The end-to-end path (runs on workers) is in
tests/integration/test_hot_reload.py.
"""

from __future__ import annotations

import importlib
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest
from xpipe import Pipeline, PipelineManager, PipelineValidationError, Task, task
from xpipe._callables import callable_ref

from tests.harness import eventually

SOURCE = """
from xpipe import Task, pipeline


def double(x):
    return x * 2


def shout(x):
    return f"{x}!"


@pipeline("{name}")
def build():
    return [Task("a", func=double, args=(21,)), Task("b", func=shout, depends_on=["a"])]
"""


@pytest.fixture
def pm():
    manager = PipelineManager(coordinator="127.0.0.1:9", connect_timeout_s=0.5)
    yield manager
    manager.close()


@pytest.fixture
def module(tmp_path, monkeypatch):
    """A fresh module file on sys.path (a unique name: modules are cached process-wide)."""
    name = f"hr_unit_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(SOURCE.replace("{name}", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(name)
    yield mod
    sys.modules.pop(name, None)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new))


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("xpipe-hot-reload")}


def test_an_unchanged_function_keeps_its_hash_when_its_module_reloads(pm, module):
    """With a cache keyed on code_hash, only the changed task (and its dependents) would rerun."""
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name)
    before = {name: callable_ref(t.func) for name, t in module.build.tasks.items()}
    assert before["a"][0] == "" and before["a"][2], "a watched module's function must be shipped by value"
    _edit(Path(module.__file__), 'f"{x}!"', 'f"{x}?!"')  # shout changes; double does not
    assert reloader.reload()
    after = {name: callable_ref(t.func) for name, t in pm.pipelines[module.build.name].tasks.items()}
    assert after["a"][2] == before["a"][2]
    assert after["b"][2] != before["b"][2]
    assert after["b"][0] == ""


def test_disabling_before_any_reload_ships_the_module_by_import_path_again(pm, module):
    name = module.build.name
    pm.enable_hot_reload(module.build)
    assert callable_ref(module.double)[0] == ""
    pm.disable_hot_reload(name)
    assert callable_ref(module.double) == (f"{module.__name__}:double", None, "")
    with pytest.raises(KeyError, match=name):
        pm.hot_reload_status(name)


def test_the_watcher_reloads_on_an_edit_and_stops_without_leaking(pm, module):
    baseline_threads = _threads()
    fds = psutil.Process().num_fds()  # inotify descriptors are not "open files"
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name, debounce_ms=50)
    assert reloader.files == (str(Path(module.__file__).resolve()),)
    assert _threads() - baseline_threads
    assert psutil.Process().num_fds() > fds, "the watcher holds an inotify descriptor while it runs"
    _edit(Path(module.__file__), "x * 2", "x * 3")
    eventually(lambda: pm.hot_reload_status(module.build.name).version == 2, timeout_s=10, message="reloaded")
    status = pm.hot_reload_status(module.build.name)
    assert status.last_error is None and status.reloaded_at is not None and status.watching
    assert pm.pipelines[module.build.name].tasks["a"].func(1) == 3
    pm.close()
    assert not reloader.watching
    assert _threads() == baseline_threads
    # watchfiles' own thread closes its epoll and eventfd descriptors a moment after the watch ends.
    eventually(
        lambda: psutil.Process().num_fds() <= fds, timeout_s=5, message="the watcher's descriptors closed"
    )


def test_a_syntax_error_keeps_the_last_good_version_and_says_where(pm, module, caplog):
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name)
    old = pm.pipelines[module.build.name].tasks["a"].func
    path = Path(module.__file__)
    _edit(path, "return x * 2", "return x *")
    assert not reloader.reload()
    assert reloader.version == 1
    assert reloader.last_error.startswith(f"SyntaxError at {path}:6")
    assert "keeping version 1" in caplog.text
    assert pm.pipelines[module.build.name].tasks["a"].func is old
    _edit(path, "return x *", "return x * 4")
    assert reloader.reload()
    assert reloader.version == 2 and reloader.last_error is None
    assert pm.pipelines[module.build.name].tasks["a"].func(1) == 4


def test_an_exception_while_the_module_runs_restores_its_namespace(pm, module):
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name)
    path = Path(module.__file__)
    # double is redefined before the failing line runs; the old version must still use the old one
    text = path.read_text().replace("x * 2", "x * 9").replace("def shout", "1 / 0\n\n\ndef shout")
    path.write_text(text)
    assert not reloader.reload()
    assert reloader.last_error.startswith(f"ZeroDivisionError at {path}:")
    assert module.double(1) == 2
    assert pm.pipelines[module.build.name].tasks["a"].func(1) == 2


def test_a_builder_that_returns_something_invalid_keeps_the_last_good_version(pm, module):
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name)
    _edit(Path(module.__file__), 'depends_on=["a"]', 'depends_on=["nope"]')
    assert not reloader.reload()
    assert "PipelineValidationError" in reloader.last_error and "nope" in reloader.last_error
    assert pm.pipelines[module.build.name].tasks["b"].depends_on == ["a"]


def test_bad_calls_name_the_problem(pm, module):
    with pytest.raises(PipelineValidationError, match="no pipeline named 'missing'"):
        pm.enable_hot_reload("missing")
    by_hand = Pipeline("by_hand")
    by_hand.add_tasks([Task("t", func=module.double, args=(1,))])
    with pytest.raises(ValueError, match="built by hand"):
        pm.enable_hot_reload(by_hand)

    @task
    def local(x):
        return x

    in_main = Pipeline("in_main")
    in_main.builder = lambda: [local]
    in_main.builder.__module__ = "__main__"
    with pytest.raises(ValueError, match="'in_main': its builder .*<lambda>' is not a top-level def"):
        pm.enable_hot_reload(in_main)
    typed = {"__name__": "__main__"}  # as a REPL or python -c defines it: no file to re-read
    exec(compile("def build():\n    return []\n", "<stdin>", "exec"), typed)  # noqa: S102
    in_main.builder = typed["build"]
    with pytest.raises(ValueError, match="its builder 'build' has no source file \\('<stdin>'"):
        pm.enable_hot_reload(in_main)
    with pytest.raises(ValueError, match="debounce_ms must be an int from 1 to 60000"):
        pm.enable_hot_reload(module.build, debounce_ms=0)
    with pytest.raises(KeyError, match="not enabled"):
        pm.hot_reload_status("in_main")


def test_a_reloaded_module_stays_shipped_by_value_after_disable(pm, module):
    """A worker that imported the module before would run its old code from an import path."""
    pm.enable_hot_reload(module.build)
    _edit(Path(module.__file__), "x * 2", "x * 5")
    assert pm.enable_hot_reload(module.build).reload()
    pm.disable_hot_reload()
    path, pickled, code_hash = callable_ref(module.double)
    assert path == "" and pickled is not None and code_hash


def test_a_module_that_makes_a_manager_is_not_re_imported(pm, module):
    path = Path(module.__file__)
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name)
    path.write_text(path.read_text() + '\nif __name__ == "__main__":\n    PipelineManager()\n')
    path.write_text(
        path.read_text() + "\n\nclass Later:\n    def make(self):\n        return PipelineManager()\n"
    )
    assert reloader.reload(), "a manager made under the main guard or in a method does not run on re-import"
    path.write_text(path.read_text() + "\nfrom xpipe import PipelineManager\n\npm = PipelineManager()\n")
    assert not reloader.reload()
    assert "makes a PipelineManager when imported" in reloader.last_error
    assert f"{path}:" in reloader.last_error
    pm.disable_hot_reload()
    # Enabled now, it re-defines the builder from the file instead of re-importing the module.
    again = pm.enable_hot_reload(module.build)
    assert again.script is not None and again.files == (str(path.resolve()),)
    _edit(path, "x * 2", "x * 8")
    assert again.reload(), again.last_error
    assert pm.pipelines[module.build.name].tasks["a"].func(1) == 8
    assert not hasattr(module, "pm"), "the module's top level did not run again"


def test_task_functions_in_another_module_are_watched_and_reloaded_before_the_builder(
    pm, tmp_path, monkeypatch
):
    suffix = uuid.uuid4().hex[:8]
    tasks_name, pipe_name = f"hr_tasks_{suffix}", f"hr_pipe_{suffix}"
    tasks_file = tmp_path / f"{tasks_name}.py"
    tasks_file.write_text("def double(x):\n    return x * 2\n")
    (tmp_path / f"{pipe_name}.py").write_text(
        f"import textwrap\n\nfrom xpipe import Task\nfrom {tasks_name} import double\n\n\n"
        "def build():\n    return [Task('a', func=double, args=(1,)), Task('b', func=textwrap.dedent, args=(' x',))]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        pipe = importlib.import_module(pipe_name)
        pm.pipeline("two_modules")(pipe.build)
        reloader = pm.enable_hot_reload("two_modules")
        # The standard library's textwrap is not the user's code: not watched, never reloaded.
        assert reloader.files == (str(tasks_file.resolve()), str(Path(pipe.__file__).resolve()))
        _edit(tasks_file, "x * 2", "x * 7")
        eventually(
            lambda: reloader.version == 2, timeout_s=10, message="reloaded after the task module's edit"
        )
        assert pm.pipelines["two_modules"].tasks["a"].func(1) == 7
    finally:
        sys.modules.pop(tasks_name, None)
        sys.modules.pop(pipe_name, None)


def test_a_deleted_file_keeps_the_last_good_version_until_it_is_back(pm, module):
    pm.pipelines[module.build.name] = module.build
    reloader = pm.enable_hot_reload(module.build.name, debounce_ms=50)
    path = Path(module.__file__)
    text = path.read_text()
    path.unlink()
    eventually(lambda: reloader.last_error, timeout_s=10, message="the deletion reported")
    assert (
        reloader.last_error == f"FileNotFoundError: {path} is gone (deleted or moved); restore it to reload"
    )
    assert reloader.version == 1 and reloader.watching
    path.write_text(text.replace("x * 2", "x * 6"))
    eventually(lambda: reloader.version == 2, timeout_s=10, message="reloaded once the file is back")
    assert pm.pipelines[module.build.name].tasks["a"].func(1) == 6


def test_a_watcher_that_cannot_watch_reports_why_and_stops(pm, module):
    from xpipe._hotreload import HotReloader

    reloader = HotReloader(pm, module.build)
    folder = Path(module.__file__).parent
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    reloader.start()  # the folder is gone before the watch begins
    assert not reloader.watching
    assert reloader.last_error.startswith("the file watcher failed: FileNotFoundError")
    reloader.stop()


SCRIPT = """from __future__ import annotations
from xpipe import Task, pipeline, task

RUNS = []
RUNS.append(1)


def scale(x):
    return x * 10


def extract():
    return 2


if False:

    def build():  # another def of the same name: the builder is the one at its own line
        return [Task("decoy", func=extract)]


@pipeline("{name}")
def build():
    @task("double", depends_on=["extract"])
    def double(x: Rows) -> Rows:  # never defined: fine only as the file says, under the future import
        return scale(x) + 1

    return [Task("extract", func=extract), double]
"""


@pytest.fixture
def script(tmp_path):
    """A script's namespace, as ``python script.py`` makes it: ``__main__``, not in sys.modules."""
    path = tmp_path / "script.py"
    name = f"hr_script_{uuid.uuid4().hex[:8]}"
    path.write_text(SCRIPT.replace("{name}", name))
    namespace = {"__name__": "__main__", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102
    return path, namespace


def test_a_script_builder_is_re_defined_from_its_file_without_running_the_script(pm, script):
    path, ns = script
    name = ns["build"].name
    pm.pipelines[name] = ns["build"]
    reloader = pm.enable_hot_reload(name)
    assert reloader.script is not None and reloader.files == (str(path),)
    before = {n: callable_ref(t.func) for n, t in ns["build"].tasks.items()}
    assert before["extract"][0] == "", "__main__ functions travel by value"

    _edit(path, "return 2", "return 3")  # a top-level task function: re-defined, the others not
    assert reloader.reload(), reloader.last_error
    assert reloader.script.redefined == ("extract",)
    after = {n: callable_ref(t.func) for n, t in pm.pipelines[name].tasks.items()}
    assert after["extract"][2] != before["extract"][2]
    assert after["double"][2] == before["double"][2], "an unchanged nested task keeps its code hash"

    _edit(path, "scale(x) + 1", "scale(x) + 2")  # the nested task
    _edit(path, "x * 10", "x * 100")  # the helper it calls
    assert reloader.reload(), reloader.last_error
    tasks = pm.pipelines[name].tasks
    assert sorted(tasks) == ["double", "extract"], "the decoy def of the same name was not taken"
    assert tasks["double"].func(1) == 102 and tasks["extract"].func() == 3
    assert ns["scale"](1) == 100, "a changed top-level function is re-defined in the script's namespace"
    assert ns["RUNS"] == [1], "the script's top level did not run again"
    assert pm.pipelines[name] is ns["build"], "the script's name for its pipeline still holds it"


def test_a_failed_script_reload_keeps_the_last_good_version_and_the_script_s_functions(pm, script):
    path, ns = script
    name = ns["build"].name
    pm.pipelines[name] = ns["build"]
    reloader = pm.enable_hot_reload(name)
    good = path.read_text()
    old_scale = ns["scale"]

    def fails(edit: tuple[str, str], error: str) -> None:
        path.write_text(good.replace("x * 10", "x * 100").replace(*edit))
        assert not reloader.reload()
        assert error in reloader.last_error, reloader.last_error
        assert reloader.version == 1 and ns["scale"] is old_scale, "the re-defined helper is put back"
        assert pm.pipelines[name].tasks["double"].func(1) == 11

    fails(('depends_on=["extract"]', 'depends_on=["nope"]'), "nope")
    fails(("@pipeline(", "@pipeline('other') #"), "the builder now names its pipeline 'other'")
    fails(("def build():", "def built():"), f"{path} no longer defines the builder 'build'")  # both defs
    fails(("def extract", "@undefined_decorator\ndef extract"), f"NameError at {path}:12")
    fails(("return x * 100", "return x *"), f"SyntaxError at {path}:9")
    path.unlink()
    assert not reloader.reload()
    assert (
        reloader.last_error == f"FileNotFoundError: {path} is gone (deleted or moved); restore it to reload"
    )
    path.write_text(good.replace("x * 10", "x * 100"))
    assert reloader.reload() and reloader.last_error is None
    assert pm.pipelines[name].tasks["double"].func(1) == 101


def test_a_script_that_no_longer_parses_when_enabled_re_defines_every_function_once_fixed(pm, script):
    path, ns = script
    name = ns["build"].name
    pm.pipelines[name] = ns["build"]
    good = path.read_text()
    path.write_text(good + "\n(\n")  # edited between the script's start and enable
    reloader = pm.enable_hot_reload(name)
    path.write_text(good)
    assert reloader.reload(), reloader.last_error
    assert reloader.script.redefined == ("scale", "extract")


def test_a_script_builder_under_a_wrapping_decorator_keeps_it_and_is_found_in_its_own_file(
    pm, tmp_path, monkeypatch
):
    helper = f"hr_traced_{uuid.uuid4().hex[:8]}"  # the decorator lives in another file
    (tmp_path / f"{helper}.py").write_text(
        "import functools\n\nCALLS = []\n\n\ndef traced(fn):\n    @functools.wraps(fn)\n"
        "    def wrapper():\n        CALLS.append(fn.__name__)\n        return fn()\n\n    return wrapper\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "wrapped.py"
    path.write_text(
        f"from xpipe import Task, pipeline\nfrom {helper} import traced\n\n\n"
        "@pipeline('wrapped')\n@traced\ndef build():\n    return [Task('a', func=abs, args=(-1,))]\n"
    )
    ns = {"__name__": "__main__", "__file__": str(path)}
    try:
        exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102
        pm.pipelines["wrapped"] = ns["build"]
        reloader = pm.enable_hot_reload("wrapped")
        assert reloader.files == (str(path),), "the def's file, not the decorator's"
        _edit(path, "args=(-1,)", "args=(-5,)")
        assert reloader.reload(), reloader.last_error
        assert pm.pipelines["wrapped"].tasks["a"].args == (-5,)
        assert sys.modules[helper].CALLS == ["build", "build"], "the decorator under @pipeline still wraps it"
    finally:
        sys.modules.pop(helper, None)


def test_a_top_level_task_decorated_with_task_in_a_script_is_re_made_by_its_decorator(pm, tmp_path):
    path = tmp_path / "tasks_at_top.py"
    path.write_text(
        "from xpipe import pipeline, task\n\n\n@task('t')\ndef t():\n    return 1\n\n\n"
        "@pipeline('top')\ndef build():\n    return [t]\n"
    )
    ns = {"__name__": "__main__", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102
    old_task = ns["t"]
    pm.pipelines["top"] = ns["build"]
    reloader = pm.enable_hot_reload("top")
    _edit(path, "return 1", "return 2")
    assert reloader.reload(), reloader.last_error
    assert reloader.script.redefined == ("t",)
    assert ns["t"] is not old_task and pm.pipelines["top"].tasks["t"].func() == 2
