"""Governance marks that decorators put on tasks and pipelines, and how they reach the spec.

``@require_permission``, ``@audit_data_access`` / ``@log_data_access``,
``@track_data_lineage`` and ``@comply_with_gdpr`` / ``@ensure_privacy_compliance`` each add
a :class:`Governance` mark with :func:`mark`. A mark may go on a plain function (before
``@task`` or ``@pipeline`` wraps it, as the seed stacks them), on a :class:`~xpipe.Task`, or
on a :class:`~xpipe.Pipeline`; marks merge. A pipeline's mark applies to all its tasks.
The SDK copies them into ``TaskSpec`` fields 40-43 and ``PipelineSpec.lineage`` (see
:meth:`Governance.apply`), so the coordinator and workers act on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["GOVERNANCE_ATTR", "Governance", "governance_of", "mark"]

#: Where a mark is kept on a function, Task or Pipeline.
GOVERNANCE_ATTR = "__xpipe_governance__"

T = TypeVar("T")


def _union(a: tuple[str, ...], b: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))


@dataclass(frozen=True, slots=True)
class Governance:
    """What a task's (or every task of a pipeline's) governance decorators asked for.

    Attributes:
        required_permissions: Permissions the submitter must hold (``@require_permission``).
        audit_data_access: Its data accesses go to the audit log (``@audit_data_access``,
            ``@log_data_access``).
        track_lineage: Its lineage is recorded (``@track_data_lineage``,
            ``pipeline.enable_lineage()``).
        pii_fields: Field names redacted wherever data is shown (``@comply_with_gdpr``,
            ``@ensure_privacy_compliance``).
    """

    required_permissions: tuple[str, ...] = ()
    audit_data_access: bool = False
    track_lineage: bool = False
    pii_fields: tuple[str, ...] = ()

    def merged(self, other: Governance) -> Governance:
        """Both marks at once (lists joined in order without repeats, flags or-ed)."""
        return Governance(
            required_permissions=_union(self.required_permissions, other.required_permissions),
            audit_data_access=self.audit_data_access or other.audit_data_access,
            track_lineage=self.track_lineage or other.track_lineage,
            pii_fields=_union(self.pii_fields, other.pii_fields),
        )

    def apply(self, spec: Any) -> None:
        """Write this mark into a ``TaskSpec`` (adding to what it already holds)."""
        for permission in self.required_permissions:
            if permission not in spec.required_permissions:
                spec.required_permissions.append(permission)
        spec.audit_data_access = spec.audit_data_access or self.audit_data_access
        spec.track_lineage = spec.track_lineage or self.track_lineage
        for field in self.pii_fields:
            if field not in spec.pii_fields:
                spec.pii_fields.append(field)


def governance_of(*targets: Any) -> Governance | None:
    """The merged marks of ``targets`` (a Task and its function, say); None when none has one."""
    found: Governance | None = None
    for target in targets:
        mark_ = getattr(target, GOVERNANCE_ATTR, None) if target is not None else None
        if isinstance(mark_, Governance):
            found = mark_ if found is None else found.merged(mark_)
    return found


def mark(target: T, **fields: Any) -> T:
    """Add a mark to ``target`` (a function, Task or Pipeline) and return it.

    Args:
        target: What the decorator was applied to.
        **fields: :class:`Governance` fields to add.
    """
    added = Governance(**fields)
    current = getattr(target, GOVERNANCE_ATTR, None)
    setattr(target, GOVERNANCE_ATTR, current.merged(added) if isinstance(current, Governance) else added)
    return target
