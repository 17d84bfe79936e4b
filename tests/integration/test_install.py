"""``pm.install_missing_dependencies`` end to end: real workers run real pip, from a local wheel (issue 10, section 4).

No network: the workers' pip finds packages only in a directory of wheels built here
(``PIP_NO_INDEX=1``, ``PIP_FIND_LINKS``), which is how an operator points workers at their
own index too. Each worker installs into its default ``--install-dir``, under a temporary
``XDG_DATA_HOME``, never into the venv.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from xpipe import (
    DistributedExecutionError,
    InstallReport,
    Pipeline,
    PipelineExecutionError,
    PipelineManager,
    RequestRejectedError,
    Task,
)
from xpipe._proto import admin_pb2, admin_pb2_grpc

from tests import helpers_tasks as ht
from tests.harness import Cluster, assert_no_leaks, describe_pids, eventually

MODULE = "xpipe_test_probe"  # the wheel's one module; its distribution is "xpipe-test-probe"


def build_wheel(root: Path) -> Path:
    """A one-module wheel (``VALUE = 42``) in ``root/wheels``, built offline with the venv's setuptools."""
    src = root / "probe"
    src.mkdir()
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "xpipe-test-probe"\nversion = "1.0"\n\n'
        f'[tool.setuptools]\npy-modules = ["{MODULE}"]\n'
    )
    (src / f"{MODULE}.py").write_text("VALUE = 42\n")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "-q", "-w", str(wheels), str(src)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    return wheels


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(Path(tmp_path_factory.mktemp("wheel")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Cluster]:
    """A coordinator, worker "open" (``--allow-install``, label pip=yes) and worker "closed" (no flag).

    Checked for leaks after it stops (the per-test check is narrowed below).
    """
    baseline = assert_no_leaks()
    root = Path(tmp_path_factory.mktemp("install"))
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "XDG_DATA_HOME": str(root / "xdg")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)  # workers inherit it (tests.harness.child_env copies ours)
        c = Cluster(root, workers=0)
        try:
            c.start()
            c.add_worker("open", slots=1, extra_args=["--allow-install", "--labels", "pip=yes"])
            c.add_worker("closed", slots=1)
            yield c
        except BaseException:
            print(c.format_logs(), file=sys.stderr)
            raise
        finally:
            c.stop()
    leaked = assert_no_leaks(10.0, ignore=baseline)
    assert not leaked, f"the install cluster left processes alive:\n{describe_pids(leaked)}"


@pytest.fixture(autouse=True)
def _no_leaked_processes(cluster: Cluster) -> Iterator[None]:
    """conftest's per-test leak check, minus what the module's live workers run.

    An install makes a worker replace its executor children (by design), so new
    descendants of a worker that is still running are not leaks of the test; the cluster
    fixture checks that nothing at all is left once it stops.
    """
    baseline = assert_no_leaks()
    yield

    def strays() -> set[int]:
        workers = {w.pid for w in cluster.workers.values() if w.alive()}
        out = set()
        for pid in assert_no_leaks(ignore=baseline):
            try:
                if workers.isdisjoint(p.pid for p in psutil.Process(pid).parents()):
                    out.add(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    # A stray is any process left by the test outside the live workers' trees.
    eventually(lambda: not strays(), timeout_s=10.0, message="no process left outside the live workers")


@pytest.fixture(scope="module")
def pm(cluster: Cluster) -> Iterator[PipelineManager]:
    manager = PipelineManager(coordinator=cluster.address)
    try:
        yield manager
    finally:
        manager.close()


def probe_pipeline() -> Pipeline:
    p = Pipeline("probe")
    p.add_tasks([Task("use", ht.probe_module, args=(MODULE,), labels={"pip": "yes"})])
    return p


def executor_pids(proc) -> set[int]:
    return {child.pid for child in psutil.Process(proc.pid).children()}


def test_missing_module_is_installed_and_the_same_pipeline_then_succeeds(cluster, pm):
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(probe_pipeline(), monitor=False)
    e = info.value
    assert e.error_type == "DEPENDENCY_FAILURE" and e.missing_dependencies == [MODULE]
    before = executor_pids(cluster.workers["open"])

    report = pm.install_missing_dependencies(e.missing_dependencies)

    assert isinstance(report, InstallReport) and report.packages == (MODULE,)
    assert report.installed == ("open",) and report.refused == ("closed",) and not report.ok
    closed = next(w for w in report.workers if w.worker == "closed")
    assert "--allow-install" in closed.message
    assert "Successfully installed xpipe_test_probe-1.0" in next(w for w in report.workers if w.worker == "open").output_tail
    # Into the worker's own directory, never into the environment (this venv is the workers' too).
    target = Path(cluster.tmp_path) / "xdg" / "xpipe" / "packages" / "open"
    assert (target / f"{MODULE}.py").is_file()
    assert importlib.util.find_spec(MODULE) is None
    # The executor children that started before the install are replaced.
    eventually(lambda: executor_pids(cluster.workers["open"]).isdisjoint(before) and executor_pids(cluster.workers["open"]),
               timeout_s=20, message="executor children replaced after the install")  # fmt: skip
    result = pm.execute_pipeline(probe_pipeline(), monitor=False)
    assert result.outputs["use"] == 42


@pytest.mark.parametrize("bad", ["--index-url=http://x", "../x", "x @ http://example.invalid/x.whl", "-e.", "a b", ""])
def test_a_bad_name_is_refused_before_anything_runs(cluster, pm, bad):
    asked = cluster.coordinator.log_text().count(": asking ")
    with pytest.raises(RequestRejectedError) as info:
        pm.install_missing_dependencies(["fine", bad])
    assert repr(bad) in str(info.value)
    # The coordinator checks again (a client in another language skips the SDK), naming the entry.
    with grpc.insecure_channel(cluster.address) as channel, pytest.raises(grpc.RpcError) as raw:
        admin_pb2_grpc.AdminServiceStub(channel).InstallDependencies(
            admin_pb2.InstallDependenciesRequest(packages=["fine", bad]), timeout=10
        )
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and repr(bad) in raw.value.details()
    # Nothing went out to a worker.
    assert cluster.coordinator.log_text().count(": asking ") == asked


def test_a_pip_failure_is_reported_with_pips_output(pm):
    with pytest.raises(DistributedExecutionError) as info:
        pm.install_missing_dependencies(["xpipe-no-such-package"], timeout_s=60)
    report = info.value.report
    (open_,) = [w for w in report.workers if w.worker == "open"]
    assert open_.status == "FAILED" and "pip exited with code 1" in open_.message
    assert "No matching distribution found for xpipe-no-such-package" in open_.output_tail
    assert "No matching distribution" in str(info.value) and report.refused == ("closed",)


def test_a_silent_worker_is_reported_no_answer_and_its_late_answer_ignored(cluster, pm):
    closed = cluster.workers["closed"]
    closed.stop_signal(signal.SIGSTOP)
    try:
        # The client call: it returns every answer as is (the manager's would raise if "open"'s pip overran too).
        report = pm.client.install_dependencies([MODULE], timeout_s=2)
    finally:
        closed.stop_signal(signal.SIGCONT)
    (silent,) = [w for w in report.workers if w.worker == "closed"]
    assert silent.status == "FAILED" and silent.message == "no answer within 7 s"  # timeout_s + the coordinator's grace
    eventually(lambda: "matches no request (late); ignored" in cluster.coordinator.log_text(), timeout_s=10,
               message="the late answer logged and dropped")  # fmt: skip


def test_a_worker_that_leaves_mid_install_is_reported_at_once(cluster, pm):
    leaving = cluster.add_worker("leaving", slots=1)
    leaving.stop_signal(signal.SIGSTOP)  # it gets the request but cannot answer
    asked = cluster.coordinator.log_text().count("asking 3 workers")
    out: list = []
    call = threading.Thread(target=lambda: out.append(pm.install_missing_dependencies([MODULE], timeout_s=120)))
    call.start()
    try:
        eventually(lambda: cluster.coordinator.log_text().count("asking 3 workers") > asked, timeout_s=10,
                   message="the request went out to all three workers")  # fmt: skip
        leaving.kill()
    finally:
        call.join(timeout=30)
    assert not call.is_alive(), "the call did not return after the worker left"
    (gone,) = [w for w in out[0].workers if w.worker == "leaving"]
    assert gone.status == "FAILED" and gone.message == "the worker disconnected before answering"


def test_when_every_worker_refuses_the_error_names_them_and_the_flag(cluster, pm):
    cluster.workers["open"].terminate()
    # ("leaving" is gone since the test before.)
    eventually(lambda: pm.get_cluster_status().workers == 1, timeout_s=15, message="only 'closed' connected")
    with pytest.raises(RequestRejectedError) as info:
        pm.install_missing_dependencies(["yaml"], aliases={"yaml": "PyYAML>=6"})
    text = str(info.value)
    assert "closed" in text and "--allow-install" in text and "PyYAML>=6" in text
    assert info.value.report.refused == ("closed",)


def test_the_embedded_defaults_workers_install_into_its_data_dir(tmp_path, monkeypatch, wheels):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "local") as local:
        report = local.install_missing_dependencies([MODULE])
        assert report.ok and report.installed == ("local-0",)
        assert (tmp_path / "local" / "packages" / "local-0" / f"{MODULE}.py").is_file()
        p = Pipeline("probe-local")
        p.add_tasks([Task("use", ht.probe_module, args=(MODULE,))])
        assert local.execute_pipeline(p, monitor=False).outputs["use"] == 42
