"""The ``kubernetes`` autoscaling provider against a fake API server on loopback.

The provider runs unchanged with the real ``kubernetes`` client; only the far end is ours:
an aiohttp server that speaks the few endpoints the provider calls (a Deployment's
``scale`` subresource, the Deployment, a pod's metadata PATCH) the way the API server does:
bearer tokens, ``Status`` bodies on errors, and PATCH bodies read by their content type
(a JSON Patch must be a list of operations). It is a fake server, not a mock of our code:
the client's URLs, headers and JSON are what is checked.

Not tested here (no cluster on this machine): a real API server and its admission, RBAC as
``rbac.yaml`` grants it, the in-cluster service-account configuration, and the ReplicaSet
controller honouring ``pod-deletion-cost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")
from aiohttp import web  # noqa: E402

from xpipe.coordinator._provider_k8s import (  # noqa: E402
    DELETION_COST_ANNOTATION,
    MERGE_PATCH,
    REMOVE_FIRST_COST,
    KubernetesProvider,
    KubernetesProviderError,
)

NS = "xpipe"
DEPLOYMENT = "xpipe-worker"
TOKEN = "fake-sa-token"
SCALE_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOYMENT}/scale"


@dataclass
class FakeApiServer:
    """The API server's answers for one Deployment and its pods; records every request."""

    replicas: int = 5
    pods: dict[str, dict[str, str]] = field(default_factory=lambda: {"w-a": {}, "w-b": {}, "w-c": {}})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "2", "memory": "4Gi"})
    #: (method, path) -> HTTP status to answer instead (403 for a missing RBAC grant, 500 ...).
    fail: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[tuple[str, str, str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", SCALE_PATH, self._get_scale)
        app.router.add_route("PATCH", SCALE_PATH, self._patch_scale)
        app.router.add_route("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOYMENT}", self._get_deployment)
        app.router.add_route("PATCH", f"/api/v1/namespaces/{NS}/pods/{{pod}}", self._patch_pod)
        return app

    # -- the API server's conventions

    async def _check(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.method, request.path, request.headers.get("Content-Type", ""),
                              request.headers.get("Authorization", "")))  # fmt: skip
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        code = self.fail.get((request.method, request.path))
        if code == 403:
            return _status(403, "Forbidden", f'cannot {request.method.lower()} resource at "{request.path}"')
        if code is not None:
            return _status(code, "InternalError", "etcdserver: request timed out")
        return None

    async def _merge_body(self, request: web.Request) -> dict | web.Response:
        """An object for a merge patch; a JSON Patch must be a list, as the API server requires."""
        kind = request.headers.get("Content-Type", "").split(";")[0]
        body = json.loads(await request.read())
        if kind == "application/json-patch+json" and not isinstance(body, list):
            return _status(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        if kind not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}")
        return body

    def _scale(self) -> dict:
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": DEPLOYMENT, "namespace": NS, "resourceVersion": "1"},
            "spec": {"replicas": self.replicas},
            "status": {"replicas": self.replicas, "selector": "app.kubernetes.io/name=xpipe-worker"},
        }  # fmt: skip

    # -- endpoints

    async def _get_scale(self, request: web.Request) -> web.Response:
        return await self._check(request) or web.json_response(self._scale())

    async def _patch_scale(self, request: web.Request) -> web.Response:
        refused = await self._check(request)
        if refused:
            return refused
        body = await self._merge_body(request)
        if isinstance(body, web.Response):
            return body
        self.replicas = int(body["spec"]["replicas"])
        return web.json_response(self._scale())

    async def _get_deployment(self, request: web.Request) -> web.Response:
        refused = await self._check(request)
        if refused:
            return refused
        container = {"name": "worker", "image": "xpipe:latest", "resources": {"limits": self.limits}}
        return web.json_response({
            "kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": DEPLOYMENT, "namespace": NS},
            "spec": {"replicas": self.replicas, "selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [container]}}},
        })  # fmt: skip

    async def _patch_pod(self, request: web.Request) -> web.Response:
        refused = await self._check(request)
        if refused:
            return refused
        pod = request.match_info["pod"]
        if pod not in self.pods:
            return _status(404, "NotFound", f'pods "{pod}" not found')
        body = await self._merge_body(request)
        if isinstance(body, web.Response):
            return body
        self.pods[pod].update(body["metadata"]["annotations"])
        metadata = {"name": pod, "namespace": NS, "annotations": self.pods[pod]}
        return web.json_response({"kind": "Pod", "apiVersion": "v1", "metadata": metadata})


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                              "reason": reason, "code": code}, status=code)  # fmt: skip


def _kubeconfig(path: Path, port: int, token: str = TOKEN) -> Path:
    path.write_text(json.dumps({  # JSON is YAML: the client reads either
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "autoscaler", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "autoscaler", "namespace": NS}}],
    }))  # fmt: skip
    return path


def run_with_server(fake: FakeApiServer, tmp_path: Path, scenario, *, token: str = TOKEN):
    """Serve ``fake`` on a loopback port and run ``scenario(provider)`` against it."""

    async def main():
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        provider = KubernetesProvider(NS, DEPLOYMENT, in_cluster=False,
                                      kubeconfig=str(_kubeconfig(tmp_path / "kubeconfig", port, token)))  # fmt: skip
        try:
            return await scenario(provider)
        finally:
            provider.release()
            await runner.cleanup()

    return asyncio.run(asyncio.wait_for(main(), timeout=30))


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    yield FakeApiServer()


def test_scale_down_marks_drained_pods_then_patches_the_scale(fake: FakeApiServer, tmp_path: Path) -> None:
    async def scenario(provider: KubernetesProvider):
        before = await provider.current()
        await provider.scale_to(3, ["w-a", "w-c"])
        return before, await provider.current()

    assert run_with_server(fake, tmp_path, scenario) == (5, 3)
    assert fake.replicas == 3
    assert fake.pods == {"w-a": {DELETION_COST_ANNOTATION: REMOVE_FIRST_COST}, "w-b": {},
                         "w-c": {DELETION_COST_ANNOTATION: REMOVE_FIRST_COST}}  # fmt: skip
    patches = [(m, p, ct) for m, p, ct, _ in fake.requests if m == "PATCH"]
    # The pods are marked before the count drops, or the ReplicaSet would pick others.
    assert patches == [
        ("PATCH", f"/api/v1/namespaces/{NS}/pods/w-a", MERGE_PATCH),
        ("PATCH", f"/api/v1/namespaces/{NS}/pods/w-c", MERGE_PATCH),
        ("PATCH", SCALE_PATH, MERGE_PATCH),
    ]
    assert {auth for *_, auth in fake.requests} == {f"Bearer {TOKEN}"}


def test_a_pod_that_is_gone_already_is_skipped(fake: FakeApiServer, tmp_path: Path) -> None:
    async def scenario(provider: KubernetesProvider):
        await provider.scale_to(4, ["w-gone", "w-b"])

    run_with_server(fake, tmp_path, scenario)
    assert fake.replicas == 4
    assert fake.pods["w-b"] == {DELETION_COST_ANNOTATION: REMOVE_FIRST_COST}


def test_scale_up_patches_only_the_scale(fake: FakeApiServer, tmp_path: Path) -> None:
    async def scenario(provider: KubernetesProvider):
        await provider.scale_to(9, [])

    run_with_server(fake, tmp_path, scenario)
    assert fake.replicas == 9
    assert [p for m, p, *_ in fake.requests if m == "PATCH"] == [SCALE_PATH]


def test_a_refused_scale_names_the_deployment_status_and_rbac(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.fail[("PATCH", SCALE_PATH)] = 403

    async def scenario(provider: KubernetesProvider):
        await provider.scale_to(2, [])

    with pytest.raises(KubernetesProviderError) as err:
        run_with_server(fake, tmp_path, scenario)
    message = str(err.value)
    assert f"deployment {NS}/{DEPLOYMENT}" in message and "HTTP 403" in message and "rbac.yaml" in message
    assert fake.replicas == 5


def test_a_refused_pod_mark_stops_before_the_count_drops(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.fail[("PATCH", f"/api/v1/namespaces/{NS}/pods/w-a")] = 403

    async def scenario(provider: KubernetesProvider):
        await provider.scale_to(2, ["w-a"])

    with pytest.raises(KubernetesProviderError, match="mark pod w-a for removal.*HTTP 403"):
        run_with_server(fake, tmp_path, scenario)
    assert fake.replicas == 5  # not scaled down onto pods that may still be working


def test_a_wrong_token_is_named(fake: FakeApiServer, tmp_path: Path) -> None:
    async def scenario(provider: KubernetesProvider):
        await provider.scale_to(2, [])

    with pytest.raises(KubernetesProviderError, match="HTTP 401.*no valid credential"):
        run_with_server(fake, tmp_path, scenario, token="stale")


def test_current_is_none_and_logged_when_the_api_fails(fake: FakeApiServer, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    fake.fail[("GET", SCALE_PATH)] = 500

    async def scenario(provider: KubernetesProvider):
        return await provider.current()

    with caplog.at_level(logging.ERROR, logger="xpipe.coordinator._provider_k8s"):
        assert run_with_server(fake, tmp_path, scenario) is None
    assert any("read the scale of deployment xpipe/xpipe-worker: HTTP 500" in r.getMessage() for r in caplog.records)


def test_add_worker_scales_by_one_only_when_a_pod_fits(fake: FakeApiServer, tmp_path: Path) -> None:
    async def scenario(provider: KubernetesProvider):
        fits = await provider.add_worker({"cpu": 1.5, "memory": "4Gi"})
        too_many_cpus = await provider.add_worker({"cpu": 3})
        gpu = await provider.add_worker({"gpu": 1})
        return fits, too_many_cpus, gpu

    assert run_with_server(fake, tmp_path, scenario) == (f"{DEPLOYMENT}#6", None, None)
    assert fake.replicas == 6


def test_add_worker_refuses_a_bad_request(fake: FakeApiServer, tmp_path: Path) -> None:
    async def scenario(provider: KubernetesProvider):
        await provider.add_worker({"cpu": -1})

    with pytest.raises(ValueError, match="cpu"):
        run_with_server(fake, tmp_path, scenario)
    assert fake.replicas == 5


@pytest.mark.parametrize("desired", [-1, 2.5, True, "3"])
def test_a_bad_count_is_refused_before_any_call(fake: FakeApiServer, tmp_path: Path, desired) -> None:
    async def scenario(provider: KubernetesProvider):
        await provider.scale_to(desired, ["w-a"])

    with pytest.raises(ValueError, match=f"desired workers must be a whole number >= 0, got {desired!r}"):
        run_with_server(fake, tmp_path, scenario)
    assert fake.requests == []


def test_an_unreachable_api_server_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = KubernetesProvider(NS, DEPLOYMENT, in_cluster=False, kubeconfig=str(_kubeconfig(tmp_path / "kc", port)),
                                  timeout_s=2.0)  # fmt: skip
    try:
        with pytest.raises(KubernetesProviderError, match=f"unreachable at http://127.0.0.1:{port}"):
            asyncio.run(provider.scale_to(1, []))
        assert asyncio.run(provider.current()) is None
    finally:
        provider.release()


def test_a_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "kubeconfig"
    with pytest.raises(KubernetesProviderError, match=f"cannot load the kubeconfig {missing}"):
        KubernetesProvider(NS, DEPLOYMENT, in_cluster=False, kubeconfig=str(missing))


def test_in_cluster_outside_a_pod_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesProviderError, match="cannot load the in-cluster service account"):
        KubernetesProvider(NS, DEPLOYMENT, in_cluster=True)


@pytest.mark.parametrize(("namespace", "deployment"), [("", DEPLOYMENT), (NS, "")])
def test_names_are_required(namespace: str, deployment: str) -> None:
    with pytest.raises(ValueError, match="namespace .* and deployment .* are required"):
        KubernetesProvider(namespace, deployment, in_cluster=True)


def test_settings_with_a_kubeconfig_use_it(fake: FakeApiServer, tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "kc", 1)
    provider = KubernetesProvider.from_settings({"kubeconfig": str(path), "namespace": "team-a"})
    try:
        assert (provider.namespace, provider.deployment) == ("team-a", "xpipe-worker")
        assert provider._api_client.configuration.host == "http://127.0.0.1:1"
    finally:
        provider.release()
