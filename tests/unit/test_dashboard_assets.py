"""The dashboard's static files ship in the package and reference only each other.

The pages are plain files with no build step, so nothing else would notice a file that a
wheel leaves out (package data is a glob in pyproject.toml), a module import that names
a file that does not exist, or a reference to anything off the coordinator (a CDN).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from tests.harness import REPO_ROOT

STATIC = REPO_ROOT / "coordinator" / "_web" / "static"


def _static_files() -> list[Path]:
    files = sorted(p for p in STATIC.rglob("*") if p.is_file())
    assert files, f"no files in {STATIC}"
    return files


def test_every_static_file_is_package_data() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = config["package-data"].get("xpipe.coordinator._web", [])
    for path in _static_files():
        relative = path.relative_to(REPO_ROOT / "coordinator" / "_web").as_posix()
        assert any(fnmatch.fnmatchcase(relative, g) for g in globs), (
            f"{relative} is not matched by package-data 'xpipe.coordinator._web' = {globs}: a wheel would lack it")


def test_pages_reference_only_files_that_exist_and_nothing_off_host() -> None:
    for path in _static_files():
        text = path.read_text()
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), (
            f"{path.name} references an absolute URL: the dashboard must load nothing from elsewhere")
        if path.suffix == ".js":
            refs = re.findall(r"""(?:from\s+|import\()\s*["'](\./[^"']+)["']""", text)
        elif path.suffix == ".html":
            refs = [r.removeprefix("/static/") for r in re.findall(r"""(?:href|src)="(/static/[^"]+)\"""", text)]
        else:
            continue
        for ref in refs:
            assert (STATIC / ref).is_file(), f"{path.name} references {ref}, which is not in {STATIC}"
