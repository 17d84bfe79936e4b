"""``@require_permission``: a task that only submitters holding a permission may run.

The mark travels in ``TaskSpec.required_permissions``; the coordinator refuses the whole run
at submit with ``PERMISSION_DENIED`` naming the permission and the task unless the submitter
holds it in the run's namespace (docs/security.md, "Code trust").

Example::

    @task("extract_customer_data")
    @require_permission("customer_data_read")
    @log_data_access
    def extract_customers():
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ._marks import mark
from ._principal import check_name

__all__ = ["require_permission"]

T = TypeVar("T")


def require_permission(*permissions: str) -> Callable[[T], T]:
    """Mark a function, :class:`~xpipe.Task` or :class:`~xpipe.Pipeline` as needing ``permissions``.

    Works below ``@task`` (on the function), above it (on the Task), and stacked with the
    other governance decorators; marks merge. On a Pipeline it applies to every task.

    Raises:
        TypeError: used bare (``@require_permission`` without a name).
        ValueError: no name, or a malformed one (the message names it and the rule).
    """
    if len(permissions) == 1 and callable(permissions[0]):
        raise TypeError(
            f"@require_permission needs a permission name, as in @require_permission(\"customer_data_read\"); "
            f"it was applied to {getattr(permissions[0], '__name__', permissions[0])!r} bare"
        )
    if not permissions:
        raise ValueError("@require_permission needs at least one permission name")
    names = tuple(check_name("permission", p) for p in permissions)

    def decorate(target: T) -> T:
        return mark(target, required_permissions=names)

    return decorate
