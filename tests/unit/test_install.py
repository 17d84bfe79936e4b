"""What may be installed on workers, and the worker's pip runner on its own (real pip, no network)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psutil
import pytest
from xpipe._install import (
    FAILED,
    INSTALLED,
    REFUSED,
    distributions_for,
    requirement_problem,
    requirements_problem,
    timeout_problem,
)
from xpipe._limits import INSTALL_OUTPUT_TAIL_CHARS, MAX_INSTALL_PACKAGES, MAX_REQUIREMENT_CHARS
from xpipe._proto import admin_pb2, worker_pb2
from xpipe.coordinator._validate import check_install_request, check_install_result
from xpipe.worker._install import PipInstaller, default_install_dir, pip_argv

from tests.harness import eventually, eventually_async


@pytest.mark.parametrize("good", ["pandas", "PyYAML>=6", "requests[socks]>=2,<3", "a.b-c_d==1.0.post1", "x~=1.4"])
def test_plain_requirements_are_accepted(good):
    assert requirement_problem(good) == ""


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("--index-url=http://x", "pip option"),
        ("-r/etc/passwd", "pip option"),
        ("  -e .", "pip option"),
        ("../x", "not a package name"),
        ("/tmp/x.whl", "not a package name"),
        ("file:///tmp/x", "not a package name"),
        ("x @ http://example.invalid/x.whl", "URL"),
        ("x @ file:///tmp/x", "URL"),
        ('x; os_name == "posix"', "marker"),
        ("a b", "not a package name"),
        ("", "empty"),
        ("x" * (MAX_REQUIREMENT_CHARS + 1), "the limit is"),
        (7, "not a string"),
    ],
)
def test_anything_but_a_plain_requirement_is_refused_naming_it(bad, why):
    problem = requirement_problem(bad)
    assert why in problem
    if isinstance(bad, str) and bad:
        assert repr(bad)[:40] in problem  # the message names the entry


def test_list_limits_and_timeouts():
    assert "no packages" in requirements_problem([])
    assert f"the limit is {MAX_INSTALL_PACKAGES}" in requirements_problem(["x"] * (MAX_INSTALL_PACKAGES + 1))
    assert "list of requirements" in requirements_problem("pandas")
    assert "'../x'" in requirements_problem(["ok", "../x"])
    for bad in (0, -1, float("nan"), float("inf"), 1e9, True, "5"):
        assert "timeout_s" in timeout_problem(bad)
    assert timeout_problem(30) == timeout_problem(0.5) == ""


def test_module_names_map_to_distributions_callers_aliases_first():
    assert distributions_for(["yaml", "numpy", "sklearn.linear_model", "yaml"]) == ["PyYAML", "numpy", "scikit-learn"]
    assert distributions_for(["yaml", "mylib"], {"yaml": "PyYAML==6.0.1", "mylib": "my-lib"}) == ["PyYAML==6.0.1", "my-lib"]


def test_the_coordinator_checks_requests_and_worker_answers():
    assert check_install_request(admin_pb2.InstallDependenciesRequest(packages=["ok"])) == ""
    assert "'../x'" in check_install_request(admin_pb2.InstallDependenciesRequest(packages=["../x"]))
    assert "timeout_s" in check_install_request(admin_pb2.InstallDependenciesRequest(packages=["ok"], timeout_s=-1))
    assert check_install_result(worker_pb2.InstallResult(request_id="r", status=INSTALLED)) == ""
    assert "status 'MAYBE'" in check_install_result(worker_pb2.InstallResult(status="MAYBE"))
    too_long = worker_pb2.InstallResult(status=FAILED, output_tail="x" * (INSTALL_OUTPUT_TAIL_CHARS + 1))
    assert "output_tail" in check_install_result(too_long)


def test_the_pip_command_installs_into_the_target_only():
    argv = pip_argv("/srv/pk", ["pandas"])
    assert argv[:4] == [sys.executable, "-m", "pip", "install"]
    assert argv[argv.index("--target") + 1] == "/srv/pk" and argv[-1] == "pandas" and "--no-input" in argv


def test_the_default_directory_is_per_worker_name(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_install_dir("gpu box/1") == str(tmp_path / "xpipe" / "packages" / "gpu_box_1")


def pip_children() -> list[psutil.Process]:
    """pip processes under this one (``python -m pip ...``; a session broker whose command line
    merely holds "xpipe" in a path is not one)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            argv = p.cmdline()
        except psutil.Error:
            continue
        if any(argv[i : i + 2] == ["-m", "pip"] for i in range(len(argv) - 1)):
            out.append(p)
    return out


def test_a_worker_without_allow_install_refuses_and_runs_nothing(tmp_path):
    installer = PipInstaller(str(tmp_path / "pk"), allowed=False)
    installer.prepare()
    outcome = asyncio.run(installer.install(["pandas"], 30))
    assert outcome.status == REFUSED and "--allow-install" in outcome.message
    assert not (tmp_path / "pk").exists() and str(tmp_path / "pk") not in sys.path


def test_the_worker_checks_names_itself(tmp_path):
    installer = PipInstaller(str(tmp_path / "pk"), allowed=True)
    os.makedirs(installer.target_dir)
    for bad in (["--target=/"], ["x @ https://example.invalid/x"]):
        outcome = asyncio.run(installer.install(bad, 30))
        assert outcome.status == REFUSED and repr(bad[0]) in outcome.message
    assert "timeout_s" in asyncio.run(installer.install(["ok"], 0)).message
    assert os.listdir(installer.target_dir) == []


def test_pip_overrunning_its_time_is_stopped_and_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    installer = PipInstaller(str(tmp_path / "pk"), allowed=True)
    outcome = asyncio.run(installer.install(["xpipe-no-such-package"], 0.05))  # pip alone takes longer to start
    assert outcome.status == FAILED and "did not finish within 0.05 s" in outcome.message
    assert pip_children() == []


def test_prepare_puts_the_directory_on_the_path_after_the_environment(tmp_path):
    installer = PipInstaller(str(tmp_path / "pk"), allowed=True)
    try:
        installer.prepare()
        assert Path(installer.target_dir).is_dir() and sys.path[-1] == installer.target_dir
        assert oct(Path(installer.target_dir).stat().st_mode & 0o777) == "0o700"
    finally:
        sys.path.remove(installer.target_dir)


def test_a_worker_stopping_mid_install_takes_pip_down_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    installer = PipInstaller(str(tmp_path / "pk"), allowed=True)

    async def main() -> None:
        task = asyncio.ensure_future(installer.install(["xpipe-no-such-package"], 60))
        await eventually_async(pip_children, timeout_s=10, message="pip running")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    eventually(lambda: not pip_children(), timeout_s=5, message="pip gone")


def test_pip_that_cannot_start_is_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    outcome = asyncio.run(PipInstaller(str(tmp_path / "pk"), allowed=True).install(["x"], 30))
    assert outcome.status == FAILED and outcome.message.startswith("cannot start pip:")
