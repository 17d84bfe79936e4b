"""What may be installed on workers, and the answers a worker gives: one place for all three sides.

``PipelineManager.install_missing_dependencies`` (SDK), the coordinator (which trusts no
client) and each worker (which trusts no coordinator) check every requirement with
:func:`requirements_problem` before pip runs. A requirement reaches pip's command line, so
anything that pip could read as more than "this package, this version" is refused: an
option (``--index-url=...``), a path (``../x``), a URL (``x @ https://...``), an
environment marker. Where packages come from is the operator's choice (``PIP_INDEX_URL``
and friends in the worker's environment), never the caller's.

A leaf module: it imports nothing of ours but :mod:`xpipe._limits`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from xpipe._limits import MAX_INSTALL_PACKAGES, MAX_INSTALL_TIMEOUT_S, MAX_REQUIREMENT_CHARS, shown

__all__ = [
    "FAILED",
    "INSTALLED",
    "INSTALL_STATUSES",
    "MODULE_DISTRIBUTIONS",
    "REFUSED",
    "distributions_for",
    "requirement_problem",
    "requirements_problem",
    "timeout_problem",
]  # fmt: skip

#: pip installed every requirement on that worker.
INSTALLED = "INSTALLED"
#: The worker would not run pip (no ``--allow-install``, or a requirement it does not accept).
REFUSED = "REFUSED"
#: pip ran and failed (or overran its time), or the worker did not answer.
FAILED = "FAILED"
INSTALL_STATUSES = frozenset({INSTALLED, REFUSED, FAILED})

#: Import names whose distribution is named otherwise, for the ``missing_dependencies`` of a
#: DEPENDENCY_FAILURE (``import yaml`` needs ``pip install PyYAML``). A caller's ``aliases``
#: come first; a module not listed here is taken to be its own distribution name.
MODULE_DISTRIBUTIONS: dict[str, str] = {
    "yaml": "PyYAML",
    "PIL": "Pillow",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "jwt": "PyJWT",
    "google.protobuf": "protobuf",
    "attr": "attrs",
    "Crypto": "pycryptodome",
    "magic": "python-magic",
    "serial": "pyserial",
    "usb": "pyusb",
}


def requirement_problem(text: object) -> str:
    """Why ``text`` is not a bare PEP 508 requirement (name, extras, version); "" if it is."""
    if not isinstance(text, str):
        return f"requirement {text!r} is a {type(text).__name__}, not a string"
    if not text.strip():
        return "requirement '' is empty"
    if len(text) > MAX_REQUIREMENT_CHARS:
        return f"requirement {shown(text)} has {len(text)} chars; the limit is {MAX_REQUIREMENT_CHARS}"
    if text.lstrip().startswith("-"):
        return f"requirement {shown(text)} looks like a pip option; only package names are accepted"
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "not a requirement"
        return f"requirement {shown(text)} is not a package name with an optional version ({first_line})"
    if req.url:
        return f"requirement {shown(text)} names a URL; only package names are accepted (the index is the worker's)"
    if req.marker is not None:
        return f"requirement {shown(text)} has an environment marker; give the name and version only"
    return ""


def requirements_problem(packages: Sequence[object]) -> str:
    """Why this list cannot be installed (the first bad entry, or the count); "" if it can."""
    if isinstance(packages, str):
        return f"packages must be a list of requirements, got the string {shown(packages)}"
    if not packages:
        return "no packages named"
    if len(packages) > MAX_INSTALL_PACKAGES:
        return f"{len(packages)} packages named; the limit is {MAX_INSTALL_PACKAGES}"
    for text in packages:
        problem = requirement_problem(text)
        if problem:
            return problem
    return ""


def timeout_problem(timeout_s: object) -> str:
    """Why ``timeout_s`` is no install time limit (a number in (0, MAX_INSTALL_TIMEOUT_S]); "" if it is."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_INSTALL_TIMEOUT_S:
        return f"timeout_s must be a number of seconds in (0, {MAX_INSTALL_TIMEOUT_S:g}], got {timeout_s!r}"
    return ""


def distributions_for(names: Sequence[str], aliases: Mapping[str, str] | None = None) -> list[str]:
    """The pip names for these module names: ``aliases``, then :data:`MODULE_DISTRIBUTIONS`, else the name.

    A dotted module (``google.protobuf``) is looked up whole, then by its top package. Each
    distribution appears once, in first-seen order.
    """
    aliases = aliases or {}
    out: dict[str, None] = {}
    for name in names:
        top = name.split(".", 1)[0] if isinstance(name, str) else name
        found = aliases.get(name) or aliases.get(top) or MODULE_DISTRIBUTIONS.get(name) or MODULE_DISTRIBUTIONS.get(top)
        out[found or name] = None
    return list(out)
