"""buf lint runs clean on proto/, and buf breaking guards xpipe.v1 against the last release.

Clients in Go, Java and Node compile these protos; a renumbered field or a changed type
makes them misread the wire without any error, so the check runs in every `make test`.
The buf binary comes from the `buf-bin` wheel (pyproject's dev extra).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT

BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
RELEASES = REPO_ROOT / "proto" / "releases"

pytestmark = pytest.mark.skipif(
    BUF is None, reason="buf is missing: `make install` installs buf-bin (pyproject's dev extra)"
)


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.stem.rsplit("-", 1)[-1]))


def last_release() -> Path:
    """The newest committed baseline image, proto/releases/xpipe-v1-<version>.binpb."""
    images = sorted(RELEASES.glob("xpipe-v1-*.binpb"), key=_version)
    assert images, f"no baseline image in {RELEASES}: see docs/api.md, 'Compatibility'"
    return images[-1]


def buf(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BUF, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean() -> None:
    result = buf("lint")
    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


def test_lint_catches_a_bad_name(tmp_path) -> None:
    """The lint above can fail: a field named in camelCase in a copy of the module is reported."""
    module = _copy_module(tmp_path)
    proto = module / "xpipe" / "v1" / "pipeline.proto"
    text = proto.read_text()
    proto.write_text(text.replace("string idempotency_key = 2;", "string idempotencyKey = 2;", 1))
    result = buf("lint", "--error-format=json", cwd=tmp_path)
    assert result.returncode != 0
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(f["type"], f["path"]) for f in found] == [
        ("FIELD_LOWER_SNAKE_CASE", "proto/xpipe/v1/pipeline.proto")
    ]


def test_no_breaking_change_since_the_last_release() -> None:
    result = buf("breaking", "proto", "--against", str(last_release()))
    assert result.returncode == 0, (
        f"proto/ breaks clients of {last_release().name} (reserve a removed field's number and name "
        f"instead of reusing them):\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize(
    ("change", "old", "new", "said"),
    [
        ("a removed field", "  string idempotency_key = 2;\n", "", "idempotency_key"),
        ("a renumbered field", "idempotency_key = 2;", "idempotency_key = 12;", "idempotency_key"),
        ("a changed type", "uint32 chunk_bytes = 5;", "string chunk_bytes = 5;", "chunk_bytes"),
        ("a removed enum value", "  RUN_CANCELLED = 5;\n", "", 'enum value "5" on enum "RunState"'),
        ("a removed RPC", "  rpc GetTaskStats(GetTaskStatsRequest) returns (GetTaskStatsResponse);\n", "",
         "GetTaskStats"),
        ("a renamed field", "uint64 inline_max_bytes = 3;", "uint64 inline_max_size = 3;", "inline_max"),
    ],
)
def test_breaking_changes_are_reported(tmp_path, change, old, new, said) -> None:
    """A deliberately broken copy of the protos fails against the baseline, naming what broke."""
    module = _copy_module(tmp_path)
    for proto in (module / "xpipe" / "v1").glob("*.proto"):
        text = proto.read_text()
        if old in text:
            proto.write_text(text.replace(old, new, 1))
            break
    else:
        pytest.fail(f"{old!r} not found in the protos: update this test")
    result = buf("breaking", "proto", "--against", str(last_release()), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{change} was not reported"
    assert said in output, output


def _copy_module(tmp_path: Path) -> Path:
    """buf.yaml and proto/xpipe in tmp_path, so a change there leaves the repository alone."""
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO_ROOT / "proto" / "xpipe", tmp_path / "proto" / "xpipe")
    return tmp_path / "proto"
