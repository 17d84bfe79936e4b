"""The generated stubs in sdk/_proto match proto/ and all import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.harness import REPO_ROOT

_PROTO_SOURCES = sorted((REPO_ROOT / "proto" / "xpipe" / "v1").glob("*.proto"))


def test_stubs_are_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"stale stubs (run `make proto`):\n{result.stdout}{result.stderr}"


def test_every_proto_has_stubs() -> None:
    assert _PROTO_SOURCES, "no .proto files found under proto/xpipe/v1"
    for source in _PROTO_SOURCES:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            stub = REPO_ROOT / "sdk" / "_proto" / f"{source.stem}{suffix}"
            assert stub.is_file(), f"{source.name} has no generated {stub.name}"


@pytest.mark.parametrize("stem", [p.stem for p in _PROTO_SOURCES])
def test_stub_modules_import(stem: str) -> None:
    pb2 = importlib.import_module(f"xpipe._proto.{stem}_pb2")
    grpc_mod = importlib.import_module(f"xpipe._proto.{stem}_pb2_grpc")
    assert pb2.DESCRIPTOR.package == "xpipe.v1"
    assert pb2.DESCRIPTOR.name == f"xpipe/v1/{stem}.proto"
    assert grpc_mod.__name__.endswith("_pb2_grpc")
