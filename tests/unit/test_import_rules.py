"""The pure cores are pure at import time: what importing each part may load.

Each rule runs in a fresh interpreter (``sys.modules`` of this one already holds
everything), so a stray top-level import anywhere on the path fails the rule that it breaks.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What the coordinator's state machine must not load: the I/O and the SDK's client side.
SHELL_MODULES = {"grpc", "asyncio", "sqlite3", "xpipe._client", "xpipe._manager"}
#: Leaf modules: each imports nothing of ours but other leaves and the generated enums.
LEAVES = ["xpipe._domain", "xpipe._limits", "xpipe._backoff", "xpipe._retry", "xpipe._graph", "xpipe._lazy", "xpipe.errors",
          "xpipe._install"]
LEAF_ALLOWED = {"xpipe", "xpipe._proto", "xpipe._proto.common_pb2", *LEAVES}


def loaded_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter; the names in its ``sys.modules`` afterwards."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_state_machine_loads_no_io_and_no_sdk_client():
    loaded = loaded_after("import xpipe.coordinator._state")
    assert not SHELL_MODULES & loaded, sorted(SHELL_MODULES & loaded)
    # Nor the codecs: recovery arguments and answers are encoded by the shell.
    assert not {"xpipe._codec", "xpipe.coordinator._recovery_codec", "zstandard"} & loaded


def test_the_worker_core_loads_no_io():
    loaded = loaded_after("import xpipe.worker._state")
    assert not (SHELL_MODULES | {"psutil", "xpipe.worker._executor"}) & loaded, sorted(SHELL_MODULES & loaded)


def test_building_a_pipeline_loads_no_grpc():
    loaded = loaded_after(
        "import xpipe\n"
        "p = xpipe.Pipeline('etl')\n"
        "a = xpipe.Task('extract', print)\n"
        "p.add_tasks([a, xpipe.Task('load', print, depends_on=[a])])\n"
        "p.validate(); p.to_proto()"
    )
    assert "grpc" not in loaded and "xpipe._client" not in loaded and "xpipe._manager" not in loaded


def test_the_executor_child_loads_no_grpc():
    loaded = loaded_after("import xpipe.worker._runtask")
    assert not {"grpc", "asyncio", "sqlite3", "xpipe._client", "xpipe._manager"} & loaded


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_only_other_leaves(leaf):
    loaded = loaded_after(f"import {leaf}")
    ours = {name for name in loaded if name == "xpipe" or name.startswith("xpipe.")}
    assert ours <= LEAF_ALLOWED, sorted(ours - LEAF_ALLOWED)
    assert "grpc" not in loaded


def test_errors_module_needs_no_grpc_but_still_offers_the_translation():
    loaded = loaded_after("import xpipe.errors")
    assert "grpc" not in loaded
    # The translation lives next to the client; the old name still imports (and loads grpc then).
    loaded = loaded_after(
        "from xpipe.errors import from_grpc_error\n"
        "from xpipe._client import from_grpc_error as at_client\n"
        "assert from_grpc_error is at_client"
    )
    assert "grpc" in loaded


def test_lazy_package_attributes_import_as_before_and_unknown_names_fail():
    loaded_after(
        "from xpipe import PipelineManager, Client, Pipeline, XpipeError, __version__\n"
        "from xpipe.coordinator import Coordinator, SQLiteStore\n"
        "import xpipe, xpipe._domain\n"
        "assert xpipe.__version__ == xpipe._domain.VERSION\n"
        "try:\n    xpipe.NoSuchThing\nexcept AttributeError as exc:\n    assert 'NoSuchThing' in str(exc)\n"
        "else:\n    raise AssertionError('no AttributeError')"
    )


@pytest.mark.parametrize("path", ["coordinator/_recovery.py", "coordinator/_state.py"])
def test_the_recovery_core_does_not_pickle(path):
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert not {name for name in imported if "pickle" in name or "_codec" in name}, path


def test_the_version_is_written_once():
    import importlib.metadata

    import xpipe
    from xpipe._domain import VERSION

    assert xpipe.__version__ == VERSION == importlib.metadata.version("xpipe-cluster")
