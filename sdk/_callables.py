"""How a Python callable travels from the client to a worker.

A worker that has the user's code installed should import it, which is faster and keeps
tracebacks readable, so an importable function is sent as ``"module:qualname"``. Anything
else (lambdas, nested functions, code in ``__main__``, bound methods) is cloudpickled and
sent once per worker under the sha256 of its bytes. The functions of a module under hot
reload (:func:`ship_by_value`) are cloudpickled too, so that a worker, which caches the
modules it imported, runs the reloaded code.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from .errors import SerializationError

__all__ = ["callable_ref", "load_callable", "load_pickled", "describe_callable", "ship_by_value", "ship_by_reference"]

_PICKLE_PROTOCOL = 5
#: Module name -> how many hot reloaders ship its functions by value (sdk/_hotreload.py).
_BY_VALUE: Counter[str] = Counter()


def ship_by_value(module: Any) -> None:
    """Ship ``module``'s functions by value from now on, until :func:`ship_by_reference`.

    A reloaded module's functions must reach workers as code, not as an import path that
    a worker resolves against the stale module it imported before; by value, a function's
    ``code_hash`` changes exactly when its code (or a global it uses) changes. Calls nest.
    """
    if _BY_VALUE[module.__name__] == 0:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    _BY_VALUE[module.__name__] += 1


def ship_by_reference(module: Any) -> None:
    """Undo one :func:`ship_by_value` of ``module``; the last undo restores import paths."""
    name = module.__name__
    if _BY_VALUE[name] <= 0:
        return
    _BY_VALUE[name] -= 1
    if _BY_VALUE[name] == 0:
        del _BY_VALUE[name]
        import cloudpickle

        if name in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.unregister_pickle_by_value(module)


def describe_callable(func: Any) -> str:
    """A short human name for ``func`` used in error messages."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    text = repr(func)
    return text if len(text) <= 80 else text[:77] + "..."


def _walk(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _unwrap_task(obj: Any) -> Any:
    # A module-level ``@task`` function is bound under its name to the Task object, not to
    # the function; the Task's ``func`` is what a worker must run.
    from ._dag import Task  # local import: _dag imports this module

    return obj.func if isinstance(obj, Task) else obj


def _import_path(func: Any) -> str | None:
    """``"module:qualname"`` if importing it gives back ``func`` itself, else None."""
    module_name = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    if module_name == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    if module_name in _BY_VALUE:  # under hot reload: a worker's import would be stale
        return None
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except Exception:
            return None
    try:
        found = _walk(module, qualname)
    except Exception:
        return None
    if found is func or _unwrap_task(found) is func:
        return f"{module_name}:{qualname}"
    return None


def callable_ref(func: Callable[..., Any]) -> tuple[str, bytes | None, str]:
    """Say how a worker will find ``func``: ``(import_path, pickled, code_hash)``.

    Returns ``("module:qualname", None, "")`` when the function can be imported by name and
    importing it yields the very same object; otherwise ``("", data, sha256_hex(data))`` with
    ``data`` the cloudpickled callable.

    Raises:
        SerializationError: ``func`` is not importable and cloudpickle cannot serialise it.
    """
    path = _import_path(func)
    if path is not None:
        return path, None, ""
    import cloudpickle

    try:
        data = cloudpickle.dumps(func, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"cannot ship callable {describe_callable(func)}: it is not importable by name and "
            f"cloudpickle failed: {type(exc).__name__}: {exc}"
        ) from exc
    return "", data, hashlib.sha256(data).hexdigest()


def load_callable(import_path: str) -> Callable[..., Any]:
    """Import ``"module:qualname"`` and return the object it names.

    A name bound to a ``Task`` (a module-level ``@task`` function) gives the Task's function.

    Raises:
        SerializationError: the path is malformed, the module does not import, or the
            qualname is missing from it; the message names the path.
    """
    module_name, sep, qualname = import_path.partition(":") if isinstance(import_path, str) else ("", "", "")
    if not sep or not module_name or not qualname or ":" in qualname:
        raise SerializationError(f"bad import path {import_path!r}: expected 'module:qualname'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise SerializationError(
            f"cannot load {import_path!r}: importing module {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        obj = _walk(module, qualname)
    except AttributeError as exc:
        raise SerializationError(
            f"cannot load {import_path!r}: module {module_name!r} has no {qualname!r} ({exc})"
        ) from exc
    obj = _unwrap_task(obj)
    if not callable(obj):
        raise SerializationError(
            f"cannot load {import_path!r}: it names a {type(obj).__name__}, not a callable"
        )
    return obj


def load_pickled(data: bytes) -> Callable[..., Any]:
    """Unpickle a callable made by :func:`callable_ref` (plain pickle reads cloudpickle output).

    Raises:
        SerializationError: the bytes are corrupt, need a module this process lacks, or do
            not hold a callable.
    """
    try:
        obj = pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle callable: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise SerializationError(f"pickled code holds a {type(obj).__name__}, not a callable")
    return obj
