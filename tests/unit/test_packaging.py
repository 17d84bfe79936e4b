"""Every Python package of ours is listed in pyproject.toml, so a built wheel ships it.

An editable install finds unlisted subpackages anyway, so a missing entry shows only in a
wheel: this test catches it where every other test passes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {Path(folder): name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join((name, *rel.parts)))
    missing = sorted(found - listed)
    assert not missing, f"packages not listed in pyproject.toml [tool.setuptools] packages: {missing}"
