"""The seed's calls that are not built yet: each one raises NotImplementedError naming why.

A user who runs a sample from the seed design must learn why it stops and which issue
builds the missing part, never meet an ``AttributeError``. The methods are attached to
:class:`~xpipe.PipelineManager` and :class:`~xpipe.Pipeline`. The list is also in the README
("Not built yet"), and shrinks as the issues land.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["UNBUILT_FEATURES", "not_built"]

#: issue number -> what it builds, for the messages (and the README's list).
UNBUILT_FEATURES: dict[int, str] = {}  # every seed call is built (issue 17 was the last)


def _refuse(call: str, issue: int, hint: str) -> NoReturn:
    message = f"{call} is not built yet: {UNBUILT_FEATURES[issue]} is issue {issue}"
    raise NotImplementedError(message + (f"; {hint}" if hint else ""))


def not_built(call: str, issue: int, hint: str = "") -> Callable[..., NoReturn]:
    """A method that raises NotImplementedError for ``call`` (e.g. ``"pm.warm_cache()"``)."""

    def method(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(call, issue, hint)

    method.__name__ = call.split(".")[-1].rstrip("()")
    method.__doc__ = f"Not built yet ({UNBUILT_FEATURES[issue]}, issue {issue}).\n\nRaises:\n    NotImplementedError: always."
    return method
