"""The autoscaler's ``kubernetes`` provider: scales the workers Deployment.

Workers on Kubernetes are the pods of one Deployment (``deploy/kubernetes/worker.yaml``),
each named after its pod (``--name=$(POD_NAME)``). Scaling is a PATCH of the Deployment's
``scale`` subresource, the same call ``kubectl scale`` makes, so the coordinator needs only
the ``get``/``patch`` rights on ``deployments/scale`` that ``rbac.yaml`` grants, not the
whole Deployment. Scaling down removes the workers the autoscaler drained: before the
replica count drops, their pods get the lowest ``controller.kubernetes.io/pod-deletion-cost``,
which the ReplicaSet controller deletes first.

The ``kubernetes`` client is blocking (urllib3), so every call runs in a thread and the
coordinator's event loop never waits on the API server. The client is an optional extra:
``pip install 'xpipe-cluster[kubernetes]'``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xpipe._limits import normalize_resources
from xpipe.errors import DistributedExecutionError

from ._providers import Provider

__all__ = ["DELETION_COST_ANNOTATION", "REMOVE_FIRST_COST", "KubernetesProvider", "KubernetesProviderError"]

log = logging.getLogger(__name__)

#: Pods with the lowest cost are deleted first when a ReplicaSet scales down (Kubernetes 1.22+).
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
#: The lowest cost the API accepts (an int32): a drained worker goes before any other pod.
REMOVE_FIRST_COST = str(-(2**31))
#: The bodies sent here are merge patches: say so, rather than rely on how each client version
#: guesses a PATCH's content type from its body.
MERGE_PATCH = "application/merge-patch+json"
#: Where a pod finds its own namespace (the service account's mount).
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Pod template resource names for the xpipe resources a request may name.
_TEMPLATE_KEYS = {"cpu_cores": "cpu", "memory_bytes": "memory", "gpu": "nvidia.com/gpu"}


class KubernetesProviderError(DistributedExecutionError):
    """The API server refused or did not answer a scaling call (the message names the call,
    the Deployment and the HTTP status), or the client cannot be configured."""


class KubernetesProvider(Provider):
    """Scales Deployment ``deployment`` in ``namespace``; see the module docstring.

    Args:
        namespace: the Deployment's namespace.
        deployment: the workers Deployment's name.
        in_cluster: authenticate with the pod's service account (the coordinator runs in the
            cluster); otherwise read ``kubeconfig``.
        kubeconfig: a kubeconfig file (None: ``$KUBECONFIG`` or ``~/.kube/config``).
        timeout_s: how long one API call may take.

    Raises:
        KubernetesProviderError: the ``kubernetes`` package is missing, or the kubeconfig or
            in-cluster environment cannot be loaded (the message names which).
        ValueError: an empty namespace or deployment name, or a timeout that is not positive.
    """

    name = "kubernetes"

    def __init__(
        self, namespace: str, deployment: str, in_cluster: bool, kubeconfig: str | None = None, *,
        timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        if not namespace or not deployment:
            raise ValueError(
                f"kubernetes provider: namespace ({namespace!r}) and deployment ({deployment!r}) are required"
            )
        if not timeout_s > 0:
            raise ValueError(f"kubernetes provider: timeout_s must be positive, got {timeout_s!r}")
        self.namespace = namespace
        self.deployment = deployment
        self.timeout_s = timeout_s
        k8s = _client_module()
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        configuration = k8s.Configuration()
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
            raise KubernetesProviderError(f"kubernetes provider: cannot load the {where}: {exc}") from exc
        self._api_client = k8s.ApiClient(configuration)
        self._apps = k8s.AppsV1Api(self._api_client)
        self._core = k8s.CoreV1Api(self._api_client)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> KubernetesProvider:
        """Build from ``[coordinator.autoscale]`` keys, defaulting to the in-cluster layout.

        Keys (all optional): ``namespace`` (default: the pod's own namespace, else
        ``default``), ``deployment`` (default ``xpipe-worker``), ``kubeconfig`` (given:
        use that file; absent: the in-cluster service account).
        """
        kubeconfig = settings.get("kubeconfig") or None
        namespace = settings.get("namespace") or _own_namespace()
        return cls(namespace, settings.get("deployment") or "xpipe-worker", kubeconfig is None, kubeconfig)

    async def current(self) -> int | None:
        """The Deployment's desired replicas, or None when the API cannot tell now (logged)."""
        try:
            scale = await self._call("read the scale of", self._apps.read_namespaced_deployment_scale,
                                     self.deployment, self.namespace)  # fmt: skip
        except KubernetesProviderError as exc:
            log.error("%s", exc)
            return None
        return int(scale.spec.replicas or 0)

    async def scale_to(self, desired: int, remove: list[str]) -> None:
        """Set the replica count to ``desired``, removing the pods named in ``remove`` first.

        ``remove`` names workers the autoscaler already drained; a pod that is gone already is
        skipped. The count is patched even if no pod was marked: the ReplicaSet then picks
        which pods go by its own order.

        Raises:
            ValueError: ``desired`` is not a whole number >= 0.
            KubernetesProviderError: a call was refused (403 without RBAC, 404 without the
                Deployment) or timed out; the replica count was not changed if it was the scale
                PATCH that failed.
        """
        if isinstance(desired, bool) or not isinstance(desired, int) or desired < 0:
            raise ValueError(f"kubernetes provider: desired workers must be a whole number >= 0, got {desired!r}")
        for pod in remove:
            await self._mark_for_removal(pod)
        body = {"spec": {"replicas": desired}}
        await self._call("patch the scale of", self._apps.patch_namespaced_deployment_scale,
                         self.deployment, self.namespace, body, _content_type=MERGE_PATCH)  # fmt: skip
        log.info("deployment %s/%s scaled to %d (removing first: %s)", self.namespace, self.deployment, desired,
                 ", ".join(remove) or "none")  # fmt: skip

    async def add_worker(self, resources: dict) -> str | None:
        """One more replica if a worker pod fits ``resources``, else None (logged).

        Every pod of a Deployment is alike, so a request that exceeds the pod template's
        limits (or requests, where a resource has no limit) cannot be met by scaling: that is
        None, with the resource that does not fit in the log. On success the answer is
        ``"DEPLOYMENT#N"`` (N the new replica count), not a pod name: the ReplicaSet names
        the pod later.

        Raises:
            ValueError: ``resources`` has a bad key or amount (see ``normalize_resources``).
            KubernetesProviderError: reading the Deployment or patching its scale failed.
        """
        wanted = normalize_resources(resources)
        deployment = await self._call("read", self._apps.read_namespaced_deployment, self.deployment, self.namespace)
        capacity = _template_capacity(deployment)
        requested = {k: v for k, v in (("cpu_cores", wanted.cpu_cores), ("memory_bytes", wanted.memory_bytes),
                                       ("gpu", wanted.gpu)) if v}  # fmt: skip
        requested.update(wanted.custom)
        for key, amount in requested.items():
            pod_key = _TEMPLATE_KEYS.get(key, key)
            if capacity.get(pod_key, 0) < amount:
                log.warning("deployment %s/%s cannot fit %s=%s: a worker pod has %s=%s", self.namespace,
                            self.deployment, key, amount, pod_key, capacity.get(pod_key, "none"))  # fmt: skip
                return None
        scale = await self._call("read the scale of", self._apps.read_namespaced_deployment_scale,
                                 self.deployment, self.namespace)  # fmt: skip
        replicas = int(scale.spec.replicas or 0) + 1
        await self.scale_to(replicas, [])
        return f"{self.deployment}#{replicas}"

    def release(self) -> None:
        """Release the client's connection pool."""
        self._api_client.close()

    async def close(self) -> None:
        self.release()

    async def _mark_for_removal(self, pod: str) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: REMOVE_FIRST_COST}}}
        try:
            await self._call(f"mark pod {pod} for removal in", self._core.patch_namespaced_pod, pod, self.namespace,
                             body, _content_type=MERGE_PATCH, raw=True)  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise KubernetesProviderError(_describe(f"mark pod {pod} for removal in", self, exc)) from exc
            log.info("pod %s/%s is gone already; nothing to mark", self.namespace, pod)

    async def _call(self, what: str, fn, *args, raw: bool = False, **kwargs):
        """Run one blocking client call in a thread; errors name ``what`` and the Deployment."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=self.timeout_s, **kwargs)
        except ApiException as exc:
            if raw:
                raise
            raise KubernetesProviderError(_describe(what, self, exc)) from exc
        except (HTTPError, OSError) as exc:
            raise KubernetesProviderError(
                f"kubernetes provider: cannot {what} deployment {self.namespace}/{self.deployment}: "
                f"API server unreachable at {self._api_client.configuration.host}: {exc}"
            ) from exc


def _client_module():
    try:
        from kubernetes import client
    except ImportError as exc:
        raise KubernetesProviderError(
            "the kubernetes autoscaling provider needs the kubernetes client: pip install 'xpipe-cluster[kubernetes]'"
        ) from exc
    return client


def _describe(what: str, provider: KubernetesProvider, exc) -> str:
    hint = {401: " (no valid credential)", 403: " (RBAC: see deploy/kubernetes/rbac.yaml)",
            404: " (no such object)"}.get(exc.status, "")  # fmt: skip
    return (f"kubernetes provider: cannot {what} deployment {provider.namespace}/{provider.deployment}: "
            f"HTTP {exc.status} {exc.reason}{hint}")  # fmt: skip


def _own_namespace() -> str:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def _template_capacity(deployment) -> dict[str, float]:
    """What one worker pod offers: its first container's limits, else its requests."""
    from kubernetes.utils import parse_quantity

    containers = deployment.spec.template.spec.containers or []
    if not containers or containers[0].resources is None:
        return {}
    res = containers[0].resources
    amounts = {**(res.requests or {}), **(res.limits or {})}
    return {key: float(parse_quantity(value)) for key, value in amounts.items()}
