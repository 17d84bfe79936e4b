"""The command provider's failure paths on real processes, and the --autoscale-* flags' checks."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import pytest

from xpipe.coordinator._autoscale_loop import prepare_autoscaler
from xpipe.coordinator._main import build_parser
from xpipe.coordinator._providers import CommandProvider, ProviderError, resources_spec


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "provider.py"
    path.write_text(body)
    return shlex.join([sys.executable, str(path)])


def test_a_script_past_its_timeout_is_killed_and_reported(tmp_path: Path):
    provider = CommandProvider(script(tmp_path, "import time; time.sleep(60)"), timeout_s=0.5)
    with pytest.raises(ProviderError, match=r"timed out after 0.5s"):
        asyncio.run(provider.scale_to(2, []))


def test_a_script_that_cannot_start_is_reported(tmp_path: Path):
    provider = CommandProvider(str(tmp_path / "no-such-script"))
    with pytest.raises(ProviderError, match=r"no-such-script.* cannot start"):
        asyncio.run(provider.scale_to(2, []))


def test_a_failing_script_reports_its_code_and_stderr(tmp_path: Path):
    provider = CommandProvider(script(tmp_path, "import sys; print('quota exceeded', file=sys.stderr); sys.exit(7)"))
    with pytest.raises(ProviderError, match=r"exited with code 7: quota exceeded"):
        asyncio.run(provider.scale_to(3, ["w1"]))


def test_a_script_gets_argv_and_env(tmp_path: Path):
    body = "import os, sys; print(' '.join(sys.argv[1:]), os.environ['XPIPE_DESIRED_WORKERS'], os.environ['XPIPE_REMOVE_WORKERS'])"
    provider = CommandProvider(script(tmp_path, body))
    text = asyncio.run(provider._call(["scale", "3", "w1", "w2"], {"XPIPE_DESIRED_WORKERS": "3", "XPIPE_REMOVE_WORKERS": "w1,w2"}))
    assert text.strip() == "scale 3 w1 w2 3 w1,w2"
    assert asyncio.run(CommandProvider(script(tmp_path, "print('node-7')")).add_worker({"gpu": 1})) == "node-7"


def test_resources_spec_uses_the_worker_flag_spelling():
    assert resources_spec({"cpu_cores": 4, "memory_mb": 1024, "gpu": 1, "fpga": 2}) == \
        f"cpu=4,memory={2**30},gpu=1,fpga=2"  # fmt: skip
    with pytest.raises(ValueError, match="cpu"):
        resources_spec({"cpu_cores": -1})


@pytest.mark.parametrize(("flags", "message"), [
    (["--autoscale-min-workers", "5", "--autoscale-max-workers", "2"], "--autoscale-min-workers: min_workers=5 is above"),
    (["--autoscale-scale-up-threshold", "2"], "--autoscale-scale-up-threshold: scale_up_threshold=2.0"),
    (["--autoscale-interval", "0"], "--autoscale-interval: interval_s=0.0"),
    (["--autoscale-ceiling-workers", "3"], "--autoscale-ceiling-workers=3 is below --autoscale-max-workers=10"),
    (["--autoscale-provider", "command"], "--autoscale-provider command needs --autoscale-command"),
    (["--autoscale-provider", "command", "--autoscale-command", " "], "--autoscale-command is empty"),
])  # fmt: skip
def test_bad_autoscale_flags_name_the_flag(flags, message):
    opts = build_parser().parse_args(flags)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        prepare_autoscaler(opts)


def test_the_kubernetes_provider_is_loaded_only_when_chosen():
    sys.modules.pop("xpipe.coordinator._provider_k8s", None)
    settings, ceiling, provider = prepare_autoscaler(build_parser().parse_args([]))
    assert provider is None and ceiling == settings.max_workers == 10
    _, _, local = prepare_autoscaler(build_parser().parse_args(["--autoscale-provider", "local"]))
    assert local.name == "local" and "xpipe.coordinator._provider_k8s" not in sys.modules


def test_the_kubernetes_provider_is_built_from_its_flags(tmp_path: Path, monkeypatch):
    from xpipe.coordinator._provider_k8s import KubernetesProvider
    from xpipe.coordinator._providers import Provider

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    flags = ["--autoscale-provider", "kubernetes", "--autoscale-k8s-namespace", "team-a",
             "--autoscale-k8s-kubeconfig", str(kubeconfig)]  # fmt: skip
    _, _, provider = prepare_autoscaler(build_parser().parse_args(flags))
    try:
        assert isinstance(provider, KubernetesProvider) and isinstance(provider, Provider)
        assert (provider.namespace, provider.deployment) == ("team-a", "xpipe-worker")
    finally:
        asyncio.run(provider.close())
    # Outside a pod and with no kubeconfig: one line naming what could not be loaded.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="--autoscale-provider kubernetes: .*cannot load the in-cluster service account"):
        prepare_autoscaler(build_parser().parse_args(["--autoscale-provider", "kubernetes"]))


def test_duration_flags_read_units_and_refuse_bad_ones(capsys):
    opts = build_parser().parse_args(["--autoscale-scale-up-cooldown", "5min", "--autoscale-scale-down-cooldown", "90",
                                      "--autoscale-interval", "2s"])  # fmt: skip
    settings, _, _ = prepare_autoscaler(opts)
    assert (settings.scale_up_cooldown_s, settings.scale_down_cooldown_s, settings.interval_s) == (300.0, 90.0, 2.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--autoscale-scale-down-cooldown", "-1"])
    assert "argument --autoscale-scale-down-cooldown: cannot read duration '-1'" in capsys.readouterr().err
