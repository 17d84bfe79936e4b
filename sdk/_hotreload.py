"""Hot reload: when a pipeline's source changes, re-import it so the next run uses the new code.

The development loop is "edit a task, run again": ``pm.enable_hot_reload("etl")`` watches
the files of the modules that define the pipeline's builder function and its task
functions (found from the functions themselves, never a whole directory), with
``watchfiles``. On a change it re-executes those modules (``importlib.reload``; the
builder's module last, since it imports the others), re-runs the builder, and puts the new
tasks into the registered :class:`~xpipe.Pipeline`, so the next ``execute_pipeline`` or
``submit`` runs them.

Workers get the new code by value: a watched module's functions are cloudpickled (not
sent as ``module:qualname``, which a worker would resolve against the module it imported
and cached), so ``PythonCall.code_hash`` changes exactly when a function's code, or a
global it uses, changes; an unchanged function keeps its hash, and a result cache keyed
on it stays valid. Pickled code follows the code-trust rules: workers must allow it
(``--allow-code`` includes ``pickle``) and, under ``--auth``, the submitter needs
``code:pickle``.

A builder in a script (``__main__``, run as ``python script.py``) or in a module that makes
a ``PipelineManager`` when imported cannot be re-imported without running it all again:
its ``def`` is re-read from the file and re-defined alone instead (sdk/_scriptreload.py).

A failed reload (a syntax error, an exception while the module runs, a builder that now
returns something invalid) keeps the last good version: the modules' namespaces are put
back as they were, the error is logged with its file and line, and kept in
:attr:`HotReloader.last_error` until a reload succeeds. It never reaches the caller's
thread. See docs/dev-loop.md.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import linecache
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._callables import ship_by_reference, ship_by_value
from ._dag import Pipeline
from ._dag import pipeline as _pipeline_decorator
from ._scriptreload import SourceBuilder
from .errors import PipelineValidationError

if TYPE_CHECKING:
    from ._manager import PipelineManager

__all__ = ["HotReloadStatus", "HotReloader", "disable_hot_reload", "enable_hot_reload", "hot_reload_status"]

log = logging.getLogger(__name__)

#: How long watchfiles gathers changes into one batch: an editor's save is often several
#: writes (truncate, write, rename), and reloading half a file would report a false error.
DEFAULT_DEBOUNCE_MS = 200
#: How often the watcher thread wakes to notice stop(): bounds disable/close latency.
_WAKE_MS = 50
#: How long enable waits for the watcher to be in place, so no edit after it returns is missed.
_READY_TIMEOUT_S = 10.0
#: How long stop() waits for the watcher thread to end.
_JOIN_TIMEOUT_S = 5.0

# Installed libraries and the standard library are not the user's code under edit.
_LIBRARY_DIRS = tuple(
    {str(Path(p).resolve()) for key in ("stdlib", "platstdlib", "purelib", "platlib")
     if (p := sysconfig.get_paths().get(key))}
)  # fmt: skip
_XPIPE_DIR = str(Path(__file__).resolve().parent)  # the xpipe package (sdk/), not its checkout


@dataclass(frozen=True, slots=True)
class HotReloadStatus:
    """A snapshot of one pipeline's hot reload, from :func:`hot_reload_status`."""

    #: The pipeline's name.
    name: str
    #: The source files watched, absolute.
    files: tuple[str, ...]
    #: 1 for the code loaded when hot reload was enabled, +1 per successful reload.
    version: int
    #: When the last successful reload finished (``time.time()``); None: none yet.
    reloaded_at: float | None
    #: Why the last reload failed (type, file:line, message); None once a reload succeeds.
    last_error: str | None
    #: Whether the watcher still runs (False after disable, close, or a watcher failure).
    watching: bool


class HotReloader:
    """Watches one pipeline's source files and reloads it on change; see the module doc.

    Made by :func:`enable_hot_reload` (``pm.enable_hot_reload``), which starts it. Reading
    :attr:`version`, :attr:`reloaded_at` and :attr:`last_error` is safe from any thread.

    Args:
        manager: the manager whose ``pipelines`` registry gets the reloaded pipeline.
        pipeline: the pipeline to keep current; it must have been built by ``@pipeline``
            or ``@pm.pipeline`` from a builder function in a source file.
        debounce_ms: how long changes are gathered before one reload.

    Raises:
        ValueError: the pipeline has no builder function, or one hot reload cannot find
            again (not a top-level def, or not in a source file).
    """

    def __init__(
        self, manager: PipelineManager, pipeline: Pipeline, *, debounce_ms: int = DEFAULT_DEBOUNCE_MS
    ):
        self.manager = manager
        self.pipeline = pipeline
        self.name = pipeline.name
        self.debounce_ms = debounce_ms
        self.version = 1
        self.reloaded_at: float | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one reload at a time (the watcher, or reload() by hand)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._shipped: list[ModuleType] = []
        self._stopped = False  # by stop(): reload() no longer does anything
        #: Set when the builder is re-defined from its file rather than re-imported.
        self.script = self._source_builder(pipeline)
        self.modules = self._modules_of(pipeline)
        self._ship([*self.modules, *([self.script.module] if self.script and self.script.module else [])])

    # ------------------------------------------------------------------ what is watched

    def _source_builder(self, pipeline: Pipeline) -> SourceBuilder | None:
        """A SourceBuilder when the builder's module cannot be re-imported safely, else None."""
        builder = pipeline.builder
        if builder is None:
            raise ValueError(
                f"hot reload of pipeline {self.name!r}: it was built by hand, not by a @pipeline / "
                "@pm.pipeline function, so there is no builder to re-run"
            )
        module = _module_of(builder)
        if module is not None and _manager_made_at(module) is None:
            return None  # an ordinary module: re-imported whole
        try:  # __main__, or a module whose import makes a manager: re-define the builder alone
            return SourceBuilder(builder, self.name)
        except ValueError as exc:
            raise ValueError(f"hot reload of pipeline {self.name!r}: {exc}") from None

    def _modules_of(self, pipeline: Pipeline) -> list[ModuleType]:
        """The modules to re-import, the builder's last: it imports the task modules."""
        builder = pipeline.builder
        assert builder is not None  # checked by _source_builder
        builder_module = None if self.script is not None else _module_of(builder)
        found: dict[str, ModuleType] = {}
        funcs = [task.func for task in pipeline.tasks.values() if task.func is not None]
        if pipeline.recovery_handler_func is not None:
            funcs.append(pipeline.recovery_handler_func)
        for func in funcs:
            plain = getattr(func, "__func__", func)
            if self.script is not None and getattr(plain, "__globals__", None) is self.script.namespace:
                continue  # the builder's file: re-defined from its source
            module = _module_of(func)
            if module is None and getattr(plain, "__module__", None) == "__main__":
                log.warning("hot reload of pipeline %r: %s is not in a module file it can re-import; "
                            "edits to it need a new enable_hot_reload", self.name, _describe(func))  # fmt: skip
            elif module is not None and module is not builder_module:
                found.setdefault(module.__name__, module)
        modules = [*found.values(), *([builder_module] if builder_module is not None else [])]
        for module in modules:
            _refuse_a_manager(module)
        return modules

    @property
    def files(self) -> tuple[str, ...]:
        """The watched source files."""
        files = tuple(_source_file(m) for m in self.modules)
        return (*files, self.script.file) if self.script is not None else files

    def _ship(self, modules: Iterable[ModuleType]) -> None:
        for module in modules:
            if module not in self._shipped:
                ship_by_value(module)
                self._shipped.append(module)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the watcher thread and wait until it watches (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name=f"xpipe-hot-reload-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(_READY_TIMEOUT_S):
            log.warning(
                "hot reload of pipeline %r: the watcher was not ready after %.0f s",
                self.name,
                _READY_TIMEOUT_S,
            )
        log.info("hot reload of pipeline %r: watching %s", self.name, ", ".join(self.files))

    def stop(self) -> None:
        """Stop watching and wait for the thread (idempotent).

        Modules never reloaded go back to shipping by import path. Reloaded ones stay
        shipped by value for the life of this process: a worker that imported one before
        would otherwise run its old code.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("hot reload of pipeline %r: the watcher thread did not end in %.0f s",
                            self.name, _JOIN_TIMEOUT_S)  # fmt: skip
        with self._lock:
            self._stopped = True
            if self.version == 1:
                for module in self._shipped:
                    ship_by_reference(module)
            self._shipped.clear()

    @property
    def watching(self) -> bool:
        """Whether the watcher thread runs."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def status(self) -> HotReloadStatus:
        """A consistent snapshot of this reloader."""
        with self._lock:
            return HotReloadStatus(
                self.name, self.files, self.version, self.reloaded_at, self.last_error, self.watching
            )

    def _watch(self) -> None:
        import watchfiles

        try:
            while not self._stop.is_set():
                dirs = sorted({os.path.dirname(f) for f in self.files})
                wanted = {os.path.realpath(f) for f in self.files}
                changes = watchfiles.watch(
                    *dirs, watch_filter=lambda _change, path, wanted=wanted: os.path.realpath(path) in wanted,
                    debounce=self.debounce_ms, step=_WAKE_MS, rust_timeout=_WAKE_MS, yield_on_timeout=True,
                    stop_event=self._stop, recursive=False, raise_interrupt=False,
                )  # fmt: skip
                for batch in changes:
                    self._ready.set()  # the first (empty) batch: the OS watch is in place
                    if batch and self.reload() and {os.path.realpath(f) for f in self.files} != wanted:
                        break  # the pipeline now uses another module: watch anew
        except Exception as exc:  # a watcher failure must not pass unseen: keep it and log it
            log.exception("hot reload of pipeline %r: the file watcher failed; reloads stopped", self.name)
            with self._lock:
                self.last_error = f"the file watcher failed: {type(exc).__name__}: {exc}"
            self._stop.set()  # not watching from now on, whatever the thread's last instants
        finally:
            self._ready.set()

    # ------------------------------------------------------------------ reloading

    def reload(self) -> bool:
        """Re-import the modules and rebuild the pipeline now; True if it took.

        On failure the last good version stays (modules and pipeline alike), the error is
        logged and kept in :attr:`last_error`; nothing is raised.
        """
        with self._lock:
            if self._stopped:
                return False
            saved = [(m, dict(m.__dict__)) for m in self.modules]
            try:
                fresh = self._rebuild()
                modules = self._modules_of(fresh)
            except Exception as exc:  # noqa: BLE001 - whatever the user's code raised
                for module, namespace in saved:  # the last good version's functions see their old globals
                    module.__dict__.clear()
                    module.__dict__.update(namespace)
                if self.script is not None:
                    self.script.rollback()
                self.last_error = _explain(exc, self.files)
                log.error("hot reload of pipeline %r failed, keeping version %d: %s",
                          self.name, self.version, self.last_error)  # fmt: skip
                return False
            if self.script is not None:
                self.script.commit()
            self._install(fresh, modules)
            self.version += 1
            self.reloaded_at = time.time()
            self.last_error = None
        redefined = (
            f" (re-defined from {self.script.file}: {', '.join(self.script.redefined)})"
            if self.script and self.script.redefined
            else ""
        )
        log.info("hot reload of pipeline %r: version %d loaded%s", self.name, self.version, redefined)
        return True

    def _rebuild(self) -> Pipeline:
        for module in self.modules:
            if not os.path.isfile(module.__file__ or ""):
                raise FileNotFoundError(f"{module.__file__} is gone (deleted or moved); restore it to reload")
            _refuse_a_manager(module)
        if self.script is not None and not os.path.isfile(self.script.file):
            raise FileNotFoundError(f"{self.script.file} is gone (deleted or moved); restore it to reload")
        for module in self.modules:
            _drop_cached_bytecode(module)
            importlib.reload(module)
        if self.script is not None:
            linecache.checkcache(self.script.file)  # tracebacks show the new source
            fresh = _pipeline_decorator(self.name)(self.script.load())
            fresh.validate()
            return fresh
        builder = self.pipeline.builder
        assert builder is not None  # checked in __init__
        module = self.modules[-1]
        try:
            found = _walk(module, builder.__qualname__)
        except AttributeError:
            raise PipelineValidationError(
                f"module {module.__name__!r} no longer defines the builder {builder.__qualname__!r}"
            ) from None
        if isinstance(found, Pipeline):  # decorated at module level: the reload ran the builder
            fresh = found
        elif callable(found):
            fresh = _pipeline_decorator(self.name)(found)
        else:
            raise PipelineValidationError(
                f"{module.__name__}.{builder.__qualname__} is now a {type(found).__name__}, not a builder function"
            )
        if fresh.name != self.name:
            raise PipelineValidationError(
                f"the builder now names its pipeline {fresh.name!r}; hot reload keeps {self.name!r} "
                "(rename by enabling hot reload for the new name)"
            )
        fresh.validate()
        return fresh

    def _install(self, fresh: Pipeline, modules: list[ModuleType]) -> None:
        """Put the new code into the pipeline object callers hold; its settings stay."""
        target = self.pipeline
        target._tasks = fresh._tasks
        target.description = fresh.description
        target.builder = fresh.builder
        target.recovery_handler_func = fresh.recovery_handler_func
        # A module that registers with ``@pm.pipeline`` re-registered a new object while it ran.
        if self.manager.pipelines.get(self.name) is not None:
            self.manager.pipelines[self.name] = target
        self._ship(modules)
        self.modules = modules


# ---------------------------------------------------------------------- the manager's methods


def _reloaders(manager: PipelineManager) -> dict[str, HotReloader]:
    reloaders = manager.__dict__.get("_hot_reloaders")
    if reloaders is None:
        reloaders = manager.__dict__["_hot_reloaders"] = {}
        manager._on_close.append(lambda: disable_hot_reload(manager))
    return reloaders


def enable_hot_reload(
    self: PipelineManager, pipeline: Pipeline | str, *, debounce_ms: int = DEFAULT_DEBOUNCE_MS
) -> HotReloader:
    """Watch a pipeline's source files and reload it on change, for the next run (docs/dev-loop.md).

    Watched: the files of the modules defining its builder and task functions. The
    returned :class:`HotReloader` tells ``.version``, ``.reloaded_at`` and ``.last_error``
    (a failed reload keeps the last good version). Enabling a pipeline already watched
    returns its reloader. Stopped by :meth:`disable_hot_reload` or :meth:`close`.

    Args:
        pipeline: a registered name (``@pm.pipeline``) or a Pipeline made by ``@pipeline``.
        debounce_ms: how long changes are gathered before one reload (default 200).

    Raises:
        PipelineValidationError: no pipeline of that name is registered.
        ValueError: the pipeline has no builder, or one that is not a top-level def in a file,
            or a bad ``debounce_ms``.
    """
    if isinstance(debounce_ms, bool) or not isinstance(debounce_ms, int) or not 1 <= debounce_ms <= 60_000:
        raise ValueError(f"debounce_ms must be an int from 1 to 60000 (milliseconds), got {debounce_ms!r}")
    resolved = self._resolve(pipeline)
    reloaders = _reloaders(self)
    current = reloaders.get(resolved.name)
    if current is not None and current.pipeline is resolved and current.watching:
        return current
    if current is not None:
        current.stop()
    reloader = HotReloader(self, resolved, debounce_ms=debounce_ms)
    reloaders[resolved.name] = reloader
    reloader.start()
    return reloader


def disable_hot_reload(self: PipelineManager, pipeline: Pipeline | str | None = None) -> None:
    """Stop hot reload of one pipeline (a name or Pipeline), or of all with None; idempotent.

    The pipeline keeps the version last loaded.
    """
    reloaders = self.__dict__.get("_hot_reloaders") or {}
    if pipeline is None:
        names = list(reloaders)
    else:
        names = [pipeline.name if isinstance(pipeline, Pipeline) else pipeline]
    for name in names:
        reloader = reloaders.pop(name, None)
        if reloader is not None:
            reloader.stop()


def hot_reload_status(self: PipelineManager, pipeline: Pipeline | str) -> HotReloadStatus:
    """The hot reload state of a pipeline: version, last reload time, last error.

    Raises:
        KeyError: hot reload is not enabled for it (or was disabled).
    """
    name = pipeline.name if isinstance(pipeline, Pipeline) else pipeline
    reloader = (self.__dict__.get("_hot_reloaders") or {}).get(name)
    if reloader is None:
        raise KeyError(f"hot reload is not enabled for pipeline {name!r}")
    return reloader.status()


# ---------------------------------------------------------------------- helpers


def _describe(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)!s}"


def _source_file(module: ModuleType) -> str:
    return str(Path(module.__file__ or "").resolve())


def _module_of(func: Any) -> ModuleType | None:
    """The user module that defines ``func``, if it is one hot reload can re-import."""
    func = getattr(func, "__func__", func)  # a bound method (a Task subclass's run)
    name = getattr(func, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or name == "__main__" or getattr(module, "__spec__", None) is None:
        return None
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    resolved = str(Path(file).resolve())
    if resolved.startswith(_XPIPE_DIR + os.sep) or any(
        resolved.startswith(d + os.sep) for d in _LIBRARY_DIRS
    ):
        return None
    return module


def _walk(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round): false when a module is re-imported."""
    if not isinstance(test, ast.Compare) or len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in sides) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in sides
    )


def _runs_at_import(body: list[ast.stmt]) -> Iterable[ast.AST]:
    """The nodes of a module's top level that run when it is imported (not the main guard)."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from stmt.decorator_list  # decorators run at import, bodies do not
            yield from stmt.args.defaults
        elif isinstance(stmt, ast.ClassDef):  # a class body runs, its methods' bodies do not
            yield from stmt.decorator_list
            yield from _runs_at_import(stmt.body)
        elif isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
            yield from _runs_at_import(stmt.orelse)
        else:
            yield stmt


def _manager_made_at(module: ModuleType) -> int | None:
    """The line where importing ``module`` makes a PipelineManager, if it does.

    A file that does not parse says None: the reload reports it with its line.
    """
    file = module.__file__ or ""
    try:
        tree = ast.parse(Path(file).read_bytes(), filename=file)
    except (OSError, SyntaxError, ValueError):
        return None
    for top in _runs_at_import(tree.body):
        for node in ast.walk(top):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == "PipelineManager":
                    return node.lineno
    return None


def _refuse_a_manager(module: ModuleType) -> None:
    """Raise if re-executing ``module`` would make a new PipelineManager (and start a cluster).

    Raises:
        ValueError: naming the module and line.
    """
    line = _manager_made_at(module)
    if line is not None:
        raise ValueError(
            f"module {module.__name__!r} makes a PipelineManager when imported ({module.__file__}:{line}); "
            "re-importing it would start another one: make the manager outside the watched "
            "modules (in the script or notebook) and register the builder with pm.pipeline(name)"
        )


def _drop_cached_bytecode(module: ModuleType) -> None:
    """Remove the module's .pyc, so a fast edit (same size, same mtime second) is never missed.

    The import system trusts a .pyc whose recorded source mtime (whole seconds) and size
    match, so two saves within a second that keep the size would reload the old code.
    """
    file = module.__file__ or ""
    linecache.checkcache(file)  # tracebacks show the new source
    with contextlib.suppress(OSError, NotImplementedError, ValueError):
        os.remove(importlib.util.cache_from_source(file))


def _explain(exc: BaseException, files: Iterable[str]) -> str:
    """``Type at file:line: message``, at the innermost line in a watched file, if any."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__} at {exc.filename}:{exc.lineno}: {exc.msg}"
    watched = set(files)
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if str(Path(frame.filename).resolve()) in watched:
            where = f" at {frame.filename}:{frame.lineno}"
    return f"{type(exc).__name__}{where}: {exc}"
