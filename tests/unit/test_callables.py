"""How callables are referred to or shipped (xpipe._callables) and the handler registry."""

from __future__ import annotations

import hashlib
import os.path
import pickle
import subprocess
import sys
import textwrap
import threading

import cloudpickle
import pytest

from xpipe import _handlers
from xpipe._callables import callable_ref, load_callable, load_pickled
from xpipe._dag import task
from xpipe._handlers import HandlerNotFoundError, get_handler, handler, handler_names
from xpipe.errors import SerializationError, XpipeError


def double(x):
    return 2 * x


class Helper:
    @staticmethod
    def triple(x):
        return 3 * x

    def __init__(self, offset):
        self.offset = offset

    def shift(self, x):
        return x + self.offset


@task("decorated")
def decorated_task(x):
    return x - 1


def shadowed():
    return "original"


_original_shadowed = shadowed


def shadowed():  # noqa: F811 - rebinding the name on purpose
    return "replacement"


# -- callable_ref ------------------------------------------------------------------------


def test_module_level_function_is_sent_by_import_path():
    path, data, code_hash = callable_ref(double)
    assert (path, data, code_hash) == (f"{__name__}:double", None, "")
    assert load_callable(path) is double


def test_stdlib_and_nested_qualname_are_import_paths():
    path, data, _ = callable_ref(os.path.join)
    assert data is None and path == f"{os.path.join.__module__}:join"
    assert load_callable(path) is os.path.join
    path, data, _ = callable_ref(Helper.triple)
    assert (path, data) == (f"{__name__}:Helper.triple", None)
    assert load_callable(path)(2) == 6


def test_module_level_task_function_resolves_to_its_function():
    # The module attribute is the Task, not the function; the path still works.
    path, data, _ = callable_ref(decorated_task.func)
    assert (path, data) == (f"{__name__}:decorated_task", None)
    assert load_callable(path) is decorated_task.func


def test_lambda_is_pickled_and_runs_after_loading():
    path, data, code_hash = callable_ref(lambda x: x * 10)
    assert path == "" and isinstance(data, bytes)
    assert code_hash == hashlib.sha256(data).hexdigest()
    assert load_pickled(data)(4) == 40


def test_nested_function_is_pickled_with_its_closure():
    factor = 7

    def scale(x):
        return x * factor

    path, data, _ = callable_ref(scale)
    assert path == "" and data is not None
    assert load_pickled(data)(3) == 21


def test_function_defined_in_main_is_pickled():
    namespace = {"__name__": "__main__"}
    exec("def main_func(x):\n    return x + 100\n", namespace)
    path, data, _ = callable_ref(namespace["main_func"])
    assert path == "" and load_pickled(data)(1) == 101


def test_main_function_from_another_process_loads_here(tmp_path):
    # The real case: a user script (its code in __main__) ships a function to a worker.
    out = tmp_path / "code.bin"
    script = textwrap.dedent(
        f"""
        from xpipe._callables import callable_ref
        def greet(name):
            return "hello " + name
        path, data, code_hash = callable_ref(greet)
        assert path == "", path
        open({str(out)!r}, "wb").write(data)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert load_pickled(out.read_bytes())("worker") == "hello worker"


def test_bound_method_is_pickled_with_its_object():
    path, data, _ = callable_ref(Helper(5).shift)
    assert path == "" and load_pickled(data)(1) == 6


def test_rebound_name_is_not_trusted_as_import_path():
    path, data, _ = callable_ref(_original_shadowed)
    assert path == ""
    assert load_pickled(data)() == "original"


def test_hash_is_stable_for_the_same_function():
    def f(x):
        return x

    first = callable_ref(f)
    second = callable_ref(f)
    assert first == second
    assert first[2] == hashlib.sha256(first[1]).hexdigest()
    assert callable_ref(lambda x: x + 1)[2] != first[2]


def test_unpicklable_function_raises_serialization_error_naming_it():
    lock = threading.Lock()

    def uses_lock():
        with lock:
            return 1

    with pytest.raises(SerializationError, match="uses_lock") as info:
        callable_ref(uses_lock)
    assert "cloudpickle" in str(info.value)
    assert isinstance(info.value, XpipeError)


# -- load_callable / load_pickled failures -------------------------------------------------


@pytest.mark.parametrize("bad", ["nocolon", ":double", "module:", "a:b:c", ""])
def test_load_callable_rejects_malformed_paths(bad):
    with pytest.raises(SerializationError, match="bad import path"):
        load_callable(bad)


def test_load_callable_missing_module_names_the_path():
    with pytest.raises(SerializationError, match="xpipe_no_such_module:f") as info:
        load_callable("xpipe_no_such_module:f")
    assert isinstance(info.value.__cause__, ImportError)


def test_load_callable_module_failing_on_import(tmp_path, monkeypatch):
    (tmp_path / "xpipe_broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SerializationError, match="boom at import"):
        load_callable("xpipe_broken_mod:f")


def test_load_callable_missing_attribute_names_the_path():
    with pytest.raises(SerializationError, match="'os.path:no_such_function'") as info:
        load_callable("os.path:no_such_function")
    assert isinstance(info.value.__cause__, AttributeError)


def test_load_callable_rejects_non_callable():
    with pytest.raises(SerializationError, match="not a callable"):
        load_callable("os:sep")


def test_load_pickled_corrupt_bytes():
    with pytest.raises(SerializationError, match="cannot unpickle"):
        load_pickled(b"\x80\x05 definitely not a pickle")


def test_load_pickled_non_callable():
    with pytest.raises(SerializationError, match="int, not a callable"):
        load_pickled(pickle.dumps(42))


def test_load_pickled_needing_a_missing_module(tmp_path, monkeypatch):
    # Pickled by reference to a module the loading process does not have.
    (tmp_path / "xpipe_gone_mod.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import xpipe_gone_mod

    data = cloudpickle.dumps(xpipe_gone_mod.f)
    monkeypatch.delitem(sys.modules, "xpipe_gone_mod")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(SerializationError, match="xpipe_gone_mod"):
        load_pickled(data)


# -- handlers -----------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """A private handler registry, so tests do not see each other's names."""
    fresh: dict = {}
    monkeypatch.setattr(_handlers, "_registry", fresh)
    return fresh


def test_handler_registers_and_is_found(registry):
    @handler("resize")
    def resize(x):
        return x // 2

    @handler("blur")
    def blur(x):
        return x

    assert resize(10) == 5  # returned unchanged
    assert get_handler("resize") is resize
    assert handler_names() == ["blur", "resize"]


def test_bare_handler_uses_function_name(registry):
    @handler
    def sharpen(x):
        return x

    assert get_handler("sharpen") is sharpen


def test_duplicate_handler_name_with_other_function_is_refused(registry):
    @handler("resize")
    def resize(x):
        return x

    def other(x):
        return x

    with pytest.raises(ValueError, match="'resize' is already registered"):
        handler("resize")(other)
    assert get_handler("resize") is resize


def test_reregistering_the_same_function_is_allowed(registry):
    handler("twice")(double)
    handler("twice")(double)
    # A reloaded module makes a new object with the same module and qualname.
    namespace = {"__name__": __name__}
    exec("def double(x):\n    return 2 * x\n", namespace)
    handler("twice")(namespace["double"])
    assert get_handler("twice") is namespace["double"]


def test_missing_handler_is_a_key_error_naming_it(registry):
    handler("known")(double)
    with pytest.raises(HandlerNotFoundError) as info:
        get_handler("unknown-one")
    assert isinstance(info.value, KeyError) and isinstance(info.value, XpipeError)
    assert "'unknown-one'" in str(info.value) and "known" in str(info.value)


@pytest.mark.parametrize("bad", ["", "   ", 3])
def test_handler_name_must_be_a_non_empty_string(registry, bad):
    with pytest.raises(ValueError, match="non-empty string"):
        handler(bad)


def test_handler_must_decorate_a_callable(registry):
    with pytest.raises(TypeError, match="must decorate a callable"):
        handler("x")(42)
