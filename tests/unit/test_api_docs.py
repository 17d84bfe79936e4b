"""docs/api.md's reference is generated from the protos, and every proto element is documented.

The protos are the API for Go, Java and Node clients, who read docs/api.md and the .proto
comments, not our Python: a field without a comment, or a page that lags the protos, leaves
them guessing.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from tests.harness import REPO_ROOT

_spec = importlib.util.spec_from_file_location("gen_api_docs", REPO_ROOT / "scripts" / "gen_api_docs.py")
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_api_docs"] = gen  # dataclasses look their module up there
_spec.loader.exec_module(gen)


@pytest.fixture(scope="module")
def fds():
    return gen.build_descriptor_set()


def test_api_md_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_api_docs.py"), "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"docs/api.md is stale (run `make proto`):\n{result.stdout}{result.stderr}"


def test_every_element_has_a_leading_comment(fds) -> None:
    missing = gen.missing_comments(fds)
    assert not missing, (
        "proto elements without a leading `//` comment (write one on the lines before each; "
        "say units and limits):\n" + "\n".join(missing)
    )


def test_a_missing_comment_is_reported(tmp_path) -> None:
    """The check above can fail: a copy of the protos with one bare field is caught, by name."""
    (tmp_path / "xpipe" / "v1").mkdir(parents=True)
    for src in (REPO_ROOT / "proto" / "xpipe" / "v1").glob("*.proto"):
        (tmp_path / "xpipe" / "v1" / src.name).write_text(src.read_text())
    target = tmp_path / "xpipe" / "v1" / "pipeline.proto"
    text = target.read_text()
    bare = re.sub(r"(message ArtifactChunk \{\n)  //[^\n]*\n", r"\1", text, count=1)  # data's comment
    assert bare != text
    target.write_text(bare)
    assert gen.missing_comments(gen.build_descriptor_set(tmp_path)) == ["field ArtifactChunk.data"]


def test_every_element_is_in_the_page(fds) -> None:
    page = (REPO_ROOT / "docs" / "api.md").read_text()
    for element in gen.elements(fds):
        short = element.name.rsplit(".", 1)[-1]
        assert f"`{short}`" in page, f"{element.kind} {element.name} is not in docs/api.md"


def test_links_in_the_page_land(fds) -> None:
    """Every `](#anchor)` of docs/api.md, and every api.md#anchor elsewhere, names a heading of it."""
    page = (REPO_ROOT / "docs" / "api.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", page, flags=re.MULTILINE)}
    wanted = set(re.findall(r"\]\(#([^)]+)\)", page))
    for doc in [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")]:
        wanted |= set(re.findall(r"api\.md#([A-Za-z0-9_-]+)", doc.read_text()))
    assert wanted, "no links found: the pattern is wrong"
    assert sorted(wanted - anchors) == []


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
