"""``deploy/kubernetes``: every manifest against the Kubernetes OpenAPI schemas, and their cross-references.

The schemas come with ``kubernetes-validate`` (offline); validation is strict, so an unknown
field fails as a wrong type does. Both the files as written and what ``kubectl apply -k``
sends are checked: the latter through ``kubectl kustomize`` when kubectl is installed, else by
applying the kustomization's namespace and images here (``tests/helpers_kubernetes.py``).
"""

from __future__ import annotations

import copy
import functools
import re

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from tests.helpers_kubernetes import (  # noqa: E402
    DEPLOY_DIR,
    config_toml,
    containers,
    cross_reference_problems,
    grpc_probes,
    kustomization,
    kustomize_build,
    kustomize_command,
    pod_spec,
    resolve_by_hand,
    source_documents,
    unsupported_fields,
)
from xpipe._cli import build_parser as client_parser  # noqa: E402
from xpipe._proto import pipeline_pb2  # noqa: E402
from xpipe.coordinator._main import build_parser as coordinator_parser  # noqa: E402
from xpipe.worker._main import build_parser as worker_parser  # noqa: E402

#: gRPC probes are GA from 1.27, policy/v1 PodDisruptionBudgets from 1.21: the oldest we support.
OLDEST_KUBERNETES = "1.27.0"
VERSIONS = (OLDEST_KUBERNETES, kubernetes_validate.latest_version())
PARSERS = {"coordinator": coordinator_parser(), "worker": worker_parser(), "client": client_parser()}
SOURCES = source_documents()


def _id(item) -> str:
    name, index, doc = item
    return f"{name}[{index}]-{doc['kind']}-{doc['metadata']['name']}"


@functools.cache
def _built_once() -> tuple[dict, ...]:
    return tuple(kustomize_build() if kustomize_command() else resolve_by_hand())


def built() -> list[dict]:
    """What ``kubectl apply -k`` sends: a fresh copy for each caller to change."""
    return copy.deepcopy(list(_built_once()))


def _doc(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


# ------------------------------------------------------------------ schemas


def test_every_manifest_file_is_in_the_kustomization() -> None:
    files = {p.name for p in DEPLOY_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == set(kustomization()["resources"])
    assert not unsupported_fields(), "resolve_by_hand must learn these kustomization fields"


@pytest.mark.parametrize("item", SOURCES, ids=[_id(s) for s in SOURCES])
def test_each_document_matches_the_schema(item) -> None:
    _, _, doc = item
    kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_what_apply_k_sends_matches_the_schema(version: str) -> None:
    docs = built()
    assert len(docs) == len(SOURCES)
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "xpipe", doc["metadata"]
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.skipif(kustomize_command() is None, reason="no kubectl or kustomize to compare with")
def test_the_by_hand_resolution_is_what_kustomize_builds() -> None:
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(resolve_by_hand(), key=key) == sorted(built(), key=key)


def test_images_are_set_by_the_kustomization() -> None:
    images = {d["metadata"]["name"]: [c["image"] for c in containers(d)] for d in built() if containers(d)}
    assert images == {"xpipe-coordinator": ["xpipe:latest"], "xpipe-worker": ["xpipe:latest"],
                      "etcd": ["gcr.io/etcd-development/etcd:v3.5.17"]}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        (["spec", "template", "spec", "containers", 0, "livenessProbee"], {"grpc": {"port": 7400}}, "unknown field"),
        (["spec", "template", "spec", "terminationGracePeriodSeconds"], "45s", "a string for an integer"),
        (["spec", "strategy", "rollingUpdate", "maxSurge"], [1], "a list for int-or-string"),
    ],
)
def test_the_validator_refuses_a_broken_copy(path: list, value, why: str) -> None:
    broken = copy.deepcopy(_doc([d for _, _, d in SOURCES], "Deployment", "xpipe-worker"))
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


# ------------------------------------------------------------------ cross-references


def test_every_reference_resolves() -> None:
    assert cross_reference_problems(built(), PARSERS) == []


def _break(docs: list[dict], kind: str, name: str, edit) -> list[dict]:
    docs = copy.deepcopy(docs)
    edit(_doc(docs, kind, name))
    return docs


def _set_config(docs: list[dict], old: str, new: str) -> None:
    cm = _doc(docs, "ConfigMap", "xpipe-config")
    assert old in cm["data"]["xpipe.toml"]
    cm["data"]["xpipe.toml"] = cm["data"]["xpipe.toml"].replace(old, new)


BREAKAGES = {
    "service selector": (
        "Service", "xpipe-coordinator",
        lambda d: d["spec"]["selector"].update({"app.kubernetes.io/name": "xpipe-coordinatr"}),
        "Service xpipe-coordinator: selector"),
    "service target port": (
        "Service", "etcd", lambda d: d["spec"]["ports"][0].update(targetPort="clients"),
        "Service etcd: targetPort 'clients' is not a port of etcd"),
    "probe port": (
        "StatefulSet", "xpipe-coordinator",
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"].update(port=7401),
        "StatefulSet xpipe-coordinator: readinessProbe (grpc) port 7401 is not a container port"),
    "configmap": (
        "Deployment", "xpipe-worker",
        lambda d: d["spec"]["template"]["spec"]["volumes"][0]["configMap"].update(name="xpipe-conf"),
        "names ConfigMap xpipe-conf, which does not exist"),
    "service account": (
        "StatefulSet", "xpipe-coordinator",
        lambda d: d["spec"]["template"]["spec"].update(serviceAccountName="xpipe"),
        "serviceAccountName xpipe does not exist"),
    "pdb": (
        "PodDisruptionBudget", "etcd", lambda d: d["spec"]["selector"]["matchLabels"].update(app="etcd"),
        "PodDisruptionBudget etcd: selector matches no pod template"),
    "role target": (
        "Role", "xpipe-autoscaler", lambda d: d["rules"][0].update(resourceNames=["workers"]),
        "Role xpipe-autoscaler: deployments/scale workers does not exist"),
    "grace": (
        "Deployment", "xpipe-worker", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
        "terminationGracePeriodSeconds 30 leaves no margin"),
    "env var": (
        "Deployment", "xpipe-worker", lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].clear(),
        "uses $(POD_NAME), which is not in its env"),
}  # fmt: skip


@pytest.mark.parametrize("what", BREAKAGES)
def test_a_broken_reference_is_named(what: str) -> None:
    kind, name, edit, expected = BREAKAGES[what]
    problems = cross_reference_problems(_break(built(), kind, name, edit), PARSERS)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("grace_s = 30", "grace_seconds = 30", "[worker] grace_seconds: xpipe-worker has no flag --grace-seconds"),
        ("slots = 2", 'slots = "two"', "[worker] slots = 'two': not a value --slots takes"),
        ("min_workers = 2", "min_worker = 2", "[coordinator.autoscale] min_worker: unknown key"),
        ("etcd-2.etcd:2379", "etcd-3.etcd:2379", "etcd-3 is not a member of a StatefulSet behind etcd"),
        ('"xpipe-coordinator:7400"', '"xpipe-coordinator:7500"', "Service xpipe-coordinator has no port 7500"),
        ("insecure = true", 'insecure = "yes"', "[coordinator] insecure = 'yes': not a value --insecure takes"),
    ],
)
def test_a_broken_config_file_is_named(old: str, new: str, expected: str) -> None:
    docs = copy.deepcopy(built())
    _set_config(docs, old, new)
    problems = cross_reference_problems(docs, PARSERS)
    assert any(expected in p for p in problems), problems


def test_container_flags_are_flags_of_their_binary() -> None:
    binaries = {"xpipe-coordinator": PARSERS["coordinator"], "xpipe-worker": PARSERS["worker"]}
    for doc in built():
        for c in containers(doc):
            parser = binaries.get(c.get("command", [""])[0])
            if parser is None:
                continue
            known = {o for a in parser._actions for o in a.option_strings}
            assert {a.partition("=")[0] for a in c["args"]} <= known, c["args"]


def test_grpc_probes_ask_for_services_the_coordinator_reports() -> None:
    # coordinator/_server.py reports "" and its first three services (PipelineService first).
    served = {"", pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name}
    probes = grpc_probes(built())
    assert {which for _, which, _ in probes} == {"startupProbe", "livenessProbe", "readinessProbe"}
    for workload, which, action in probes:
        assert workload == "xpipe-coordinator"
        assert action.get("service", "") in served, (which, action)
        assert action["port"] == int(config_toml(built())["coordinator"]["listen"].rpartition(":")[2])


def test_etcd_members_name_each_other_by_their_stable_names() -> None:
    etcd = _doc(built(), "StatefulSet", "etcd")
    args = dict(a.removeprefix("--").split("=", 1) for a in etcd["spec"]["template"]["spec"]["containers"][0]["args"])
    members = dict(m.split("=", 1) for m in args["initial-cluster"].split(","))
    service = etcd["spec"]["serviceName"]
    assert members == {f"etcd-{i}": f"http://etcd-{i}.{service}:2380" for i in range(etcd["spec"]["replicas"])}
    assert args["initial-advertise-peer-urls"] == f"http://$(POD_NAME).{service}:2380"


def test_worker_grace_covers_the_drain_and_pods_are_locked_down() -> None:
    docs = built()
    worker = _doc(docs, "Deployment", "xpipe-worker")
    grace_s = config_toml(docs)["worker"]["grace_s"]
    assert grace_s == PARSERS["worker"].get_default("grace_s")  # the file states the default it relies on
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == grace_s + 15
    assert "replicas" not in worker["spec"]  # the autoscaler owns the count
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        # What the namespace's "restricted" Pod Security profile demands, and a read-only root.
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(doc):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_worker_pods_state_their_limits_as_worker_resources() -> None:
    docs = built()
    worker = config_toml(docs)["worker"]
    limits = containers(_doc(docs, "Deployment", "xpipe-worker"))[0]["resources"]["limits"]
    assert worker["resources"] == f"cpu={limits['cpu']},memory={limits['memory']}"
    assert worker["slots"] == int(limits["cpu"])


def test_readme_names_every_object() -> None:
    readme = (DEPLOY_DIR / "README.md").read_text(encoding="utf-8")
    for doc in built():
        assert re.search(rf"\b{re.escape(doc['metadata']['name'])}\b", readme), doc["metadata"]["name"]
    assert "kubectl apply -k" in readme

