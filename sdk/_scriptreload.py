"""Hot reload of a builder from its own source: for scripts and modules that cannot be re-imported.

A builder defined in ``__main__`` (the seed's ``python script.py`` shape), or in a module
that makes a ``PipelineManager`` when imported, cannot be reloaded by re-importing: that
would run the whole script again (a second manager, a second cluster, every top-level
statement). Instead, :class:`SourceBuilder` re-reads the file, finds the builder's ``def``
with :mod:`ast`, compiles only that definition and executes it in the script's live
globals, with the new function kept apart (the script's name for the builder stays the
``Pipeline`` its ``@pm.pipeline`` made). Task functions nested in the builder get their new
code when the new builder runs.

Plain top-level functions of the same file (tasks the builder refers to, and their helpers)
are re-defined too, but only those whose code changed (their AST, not their position or
comments), by executing their ``def`` again, decorators included, in the script's globals;
a ``def`` carrying a pipeline decorator is another builder and is left alone. Nothing else
in the file runs. See docs/dev-loop.md ("Scripts").
"""

from __future__ import annotations
import __future__

import ast
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import PipelineValidationError

__all__ = ["SourceBuilder"]

_FunctionDef = (ast.FunctionDef, ast.AsyncFunctionDef)
#: The compiler flags of ``from __future__ import ...``: a re-defined def keeps its file's.
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag
#: The decorator that registers a builder: ``@pipeline(...)``, ``@pm.pipeline(...)``, ``@xpipe.pipeline``.
_PIPELINE_DECORATOR = "pipeline"


@dataclass(slots=True)
class _Staged:
    """One reload's changes to the script's globals, kept until commit or rollback."""

    #: Re-defined top-level names and their new values.
    rebound: dict[str, Any] = field(default_factory=dict)
    #: The names already put into the script's globals: a rollback undoes only these.
    installed: list[str] = field(default_factory=list)
    #: What those names held before (absent names are not in it).
    before: dict[str, Any] = field(default_factory=dict)
    #: The new top-level defs' dumps, for the next comparison.
    dumps: dict[str, str] = field(default_factory=dict)
    #: Where the builder's def starts now (its first decorator's line).
    line: int = 0


class SourceBuilder:
    """Re-defines a builder (and changed top-level functions) from its file, without re-running it.

    Args:
        builder: the pipeline's builder function, a top-level ``def`` in a source file.
        pipeline: the pipeline's name, which a reload keeps.

    Raises:
        ValueError: the builder is not a top-level ``def`` (nested in a function or a class,
            a lambda), or its file is not there (a REPL, a notebook cell, ``python -c``).
    """

    def __init__(self, builder: Callable[..., Any], pipeline: str):
        builder = inspect.unwrap(builder)  # under a functools.wraps decorator: the user's own def
        code = getattr(builder, "__code__", None)
        qualname = getattr(builder, "__qualname__", repr(builder))
        name = getattr(builder, "__name__", "")
        if code is None or qualname != name or name == "<lambda>":
            raise ValueError(
                f"its builder {qualname!r} is not a top-level def, so hot reload cannot re-define it from "
                "its file: define it with def at the top level of the script or module"
            )
        file = str(Path(code.co_filename).resolve())  # as the watcher and error messages name files
        if not os.path.isfile(file):  # an extension-less script (#!/usr/bin/env python) counts
            raise ValueError(
                f"its builder {qualname!r} has no source file ({code.co_filename!r}: a REPL, a notebook cell "
                "or python -c); define it in a file"
            )
        #: The builder's name, and the file it is re-read from (absolute, symlinks resolved).
        self.name = name
        self.file = file
        self.pipeline = pipeline
        #: The namespace the builder was defined in (the script's module globals), live.
        self.namespace: dict[str, Any] = builder.__globals__
        module = sys.modules.get(builder.__module__)
        #: The module to ship by value (None for ``__main__``, which always is).
        self.module: ModuleType | None = (
            module if module is not None and module.__name__ != "__main__" and module.__dict__ is self.namespace
            else None
        )  # fmt: skip
        #: The top-level functions the last successful reload re-defined.
        self.redefined: tuple[str, ...] = ()
        self._line = code.co_firstlineno
        self._future_flags = code.co_flags & _FUTURE_FLAGS
        self._dumps: dict[str, str] = {}
        self._staged: _Staged | None = None
        try:
            tree = self._parse()
        except (SyntaxError, ValueError, OSError):  # edited or moved since it ran: every top-level
            return  # def counts as changed at the first reload that reads the file
        self._dumps = {node.name: _dump(node) for node in _top_level_defs(tree)}

    def _parse(self) -> ast.Module:
        return ast.parse(Path(self.file).read_bytes(), filename=self.file)

    def load(self) -> Callable[..., Any]:
        """Re-read the file, re-define what changed, and return the new builder (not yet called).

        The script's re-defined globals stay staged: :meth:`commit` keeps them,
        :meth:`rollback` puts the old ones back.

        Raises:
            SyntaxError: the file does not parse (with its file and line).
            FileNotFoundError: the file is gone.
            PipelineValidationError: the builder's def is gone, or its decorator now
                names another pipeline.
            Exception: whatever a re-executed ``def`` (its decorators, its defaults) raised.
        """
        tree = self._parse()
        node = self._find_builder(tree)
        staged = self._staged = _Staged(line=_first_line(node))
        for top in _top_level_defs(tree):
            dump = _dump(top)
            staged.dumps[top.name] = dump
            if top is node or top.name == self.name or _registers_a_pipeline(top):
                continue
            if self._dumps.get(top.name) != dump:
                staged.rebound[top.name] = self._define(top, keep_decorators=True)
        for name, value in staged.rebound.items():  # the new builder must see them: install now
            if name in self.namespace:
                staged.before[name] = self.namespace[name]
            staged.installed.append(name)
            self.namespace[name] = value
        return self._define(node, keep_decorators=False)

    def commit(self) -> None:
        """Keep the last :meth:`load`'s changes (the reload succeeded)."""
        staged, self._staged = self._staged, None
        if staged is not None:
            self._dumps = staged.dumps
            self._line = staged.line
            self.redefined = tuple(staged.rebound)

    def rollback(self) -> None:
        """Undo the last :meth:`load`'s changes to the script's globals (the reload failed)."""
        staged, self._staged = self._staged, None
        if staged is None:
            return
        for name in staged.installed:
            if name in staged.before:
                self.namespace[name] = staged.before[name]
            else:
                self.namespace.pop(name, None)

    # ------------------------------------------------------------------ helpers

    def _find_builder(self, tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef:
        """The builder's def: by name, and of several, the one nearest its last known line."""
        found = [n for n in _defs_run_by_the_script(tree.body) if n.name == self.name]
        if not found:
            raise PipelineValidationError(f"{self.file} no longer defines the builder {self.name!r}")
        return min(found, key=lambda n: abs(_first_line(n) - self._line))

    def _define(self, node: ast.FunctionDef | ast.AsyncFunctionDef, *, keep_decorators: bool) -> Any:
        """Execute one ``def`` in the script's globals and return what it bound, unbound there.

        The builder loses its pipeline decorator and every decorator above it (they would
        register a second Pipeline); the ones below it made the builder, so they stay.
        """
        if not keep_decorators:
            marks = [i for i, d in enumerate(node.decorator_list) if _is_pipeline_decorator(d)]
            if marks:
                self._check_name(node.decorator_list[marks[-1]])
                node.decorator_list = node.decorator_list[marks[-1] + 1 :]
        module = ast.Module(body=[node], type_ignores=[])
        code = compile(module, self.file, "exec", flags=self._future_flags, dont_inherit=True)
        local: dict[str, Any] = {}
        exec(code, self.namespace, local)  # noqa: S102 - the user's own file, as the script ran it
        return local[node.name]

    def _check_name(self, decorator: ast.expr) -> None:
        """Refuse a decorator that now names another pipeline: the reloader keeps its name."""
        if isinstance(decorator, ast.Call) and decorator.args:
            first = decorator.args[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value != self.pipeline
            ):
                raise PipelineValidationError(
                    f"the builder now names its pipeline {first.value!r}; hot reload keeps {self.pipeline!r} "
                    "(rename by enabling hot reload for the new name)"
                )


def _dump(node: ast.AST) -> str:
    """A def's code without positions: moving it or editing a comment is not a change."""
    return ast.dump(node, include_attributes=False)


def _first_line(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Where a def starts as ``co_firstlineno`` counts it: at its first decorator."""
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def _top_level_defs(tree: ast.Module) -> Iterable[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in tree.body if isinstance(n, _FunctionDef)]


def _defs_run_by_the_script(body: list[ast.stmt]) -> Iterable[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Defs that bind a module global: top level, or in a top-level if/try/with/for/while block."""
    for stmt in body:
        if isinstance(stmt, _FunctionDef):
            yield stmt
        elif isinstance(stmt, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
            for block in ("body", "orelse", "finalbody"):
                yield from _defs_run_by_the_script(getattr(stmt, block, []))
            for handler in getattr(stmt, "handlers", []):
                yield from _defs_run_by_the_script(handler.body)


def _is_pipeline_decorator(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name == _PIPELINE_DECORATOR


def _registers_a_pipeline(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_is_pipeline_decorator(d) for d in node.decorator_list)
