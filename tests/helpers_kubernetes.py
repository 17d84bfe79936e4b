"""Load ``deploy/kubernetes`` and check what a schema cannot: that its objects refer to each other.

Schema validation (``kubernetes-validate``) proves each object is well formed; it cannot see
that a Service selects no pod, that a probe names a port the container lacks, or that the
config file names a flag no binary has. :func:`cross_reference_problems` checks those and
returns one sentence per problem, so a test can show both that the manifests pass and that a
broken copy does not.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
CONFIG_PATH_IN_POD = "/etc/xpipe/xpipe.toml"
#: Seconds the worker may spend flushing outcomes after its grace (``worker/_daemon.py`` ``_flush_events``).
WORKER_FLUSH_S = 5
#: The ``[coordinator.autoscale]`` keys issue 17 names (the config part owns their parsing).
AUTOSCALE_KEYS = frozenset({
    "provider", "min_workers", "max_workers", "scale_up_threshold", "scale_down_threshold",
    "scale_up_cooldown", "scale_down_cooldown", "interval",
})  # fmt: skip
#: Kinds without a namespace among those used here.
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"})
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})

Doc = dict[str, Any]


def kustomization(root: Path = DEPLOY_DIR) -> Doc:
    return yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8"))


def source_documents(root: Path = DEPLOY_DIR) -> list[tuple[str, int, Doc]]:
    """(file, index, document) for every document of every resource the kustomization lists."""
    out = []
    for name in kustomization(root)["resources"]:
        docs = yaml.safe_load_all((root / name).read_text(encoding="utf-8"))
        out.extend((name, i, doc) for i, doc in enumerate(docs) if doc is not None)
    return out


def kustomize_command(root: Path = DEPLOY_DIR) -> list[str] | None:
    """The installed kustomize, as ``kubectl kustomize`` or ``kustomize build``; None: neither."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(root)]
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(root)]
    return None


def kustomize_build(root: Path = DEPLOY_DIR) -> list[Doc]:
    """What ``kubectl apply -k`` would send (requires a kustomize, see :func:`kustomize_command`)."""
    command = kustomize_command(root)
    assert command is not None, "no kubectl or kustomize on PATH"
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc is not None]


def resolve_by_hand(root: Path = DEPLOY_DIR) -> list[Doc]:
    """The kustomization applied without kustomize: its ``namespace`` and ``images`` only.

    Those are the only transformers ``kustomization.yaml`` uses; :func:`unsupported_fields`
    makes sure it stays so, and a test compares this with ``kustomize build`` where one is
    installed.
    """
    k = kustomization(root)
    namespace = k.get("namespace")
    images = {i["name"]: i for i in k.get("images", [])}
    docs = []
    for _, _, doc in source_documents(root):
        doc = copy.deepcopy(doc)
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        if namespace and doc["kind"] == "Namespace":
            doc["metadata"]["name"] = namespace
        for subject in doc.get("subjects", []) if doc["kind"] in ("RoleBinding", "ClusterRoleBinding") else []:
            if subject.get("kind") == "ServiceAccount" and namespace:
                subject["namespace"] = namespace
        for container in containers(doc):
            name, _, tag = container["image"].partition(":")
            rule = images.get(name)
            if rule:
                container["image"] = f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"
        docs.append(doc)
    return docs


def unsupported_fields(root: Path = DEPLOY_DIR) -> set[str]:
    """Kustomization fields that :func:`resolve_by_hand` does not apply."""
    return set(kustomization(root)) - {"apiVersion", "kind", "namespace", "resources", "images"}


# ------------------------------------------------------------------ pods


def pod_spec(doc: Doc) -> Doc | None:
    return doc["spec"]["template"]["spec"] if doc.get("kind") in WORKLOADS else None


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


def _labels(doc: Doc) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"].get("labels", {})


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port_names(doc: Doc) -> tuple[set[str], set[int]]:
    names, numbers = set(), set()
    for c in containers(doc):
        for p in c.get("ports", []):
            numbers.add(p["containerPort"])
            if "name" in p:
                names.add(p["name"])
    return names, numbers


def _has_port(doc: Doc, port: str | int) -> bool:
    names, numbers = _port_names(doc)
    return port in names if isinstance(port, str) else port in numbers


def _probes(container: Doc) -> Iterator[tuple[str, str, Doc]]:
    for which in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(which)
        if probe:
            for kind in ("grpc", "httpGet", "tcpSocket"):
                if kind in probe:
                    yield which, kind, probe[kind]


def grpc_probes(docs: Iterable[Doc]) -> list[tuple[str, str, Doc]]:
    """(workload name, probe kind, its grpc action) for every gRPC probe."""
    return [(d["metadata"]["name"], which, action) for d in docs for c in containers(d)
            for which, kind, action in _probes(c) if kind == "grpc"]  # fmt: skip


def config_toml(docs: Iterable[Doc]) -> dict[str, Any]:
    """The ``xpipe.toml`` that the ConfigMap ``xpipe-config`` holds, parsed."""
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "xpipe-config":
            return tomllib.loads(d["data"]["xpipe.toml"])
    raise AssertionError("no ConfigMap xpipe-config")


# ------------------------------------------------------------------ checks


def cross_reference_problems(docs: list[Doc], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """Every reference between the objects, and from the config to the binaries, that does not resolve.

    Args:
        docs: the objects (one namespace).
        parsers: ``{"coordinator": ..., "worker": ..., "client": ...}``: each binary's argparse parser.
    """
    by_kind: dict[str, dict[str, Doc]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    problems: list[str] = []

    def selected(selector: dict[str, str]) -> list[Doc]:
        return [w for w in workloads if _selects(selector, _labels(w))]

    for name, svc in by_kind.get("Service", {}).items():
        pods = selected(svc["spec"].get("selector", {}))
        if not pods:
            problems.append(f"Service {name}: selector {svc['spec'].get('selector')} matches no pod template")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for w in pods:
                if not _has_port(w, target):
                    problems.append(f"Service {name}: targetPort {target!r} is not a port of {w['metadata']['name']}")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not selected(pdb["spec"]["selector"].get("matchLabels", {})):
            problems.append(f"PodDisruptionBudget {name}: selector matches no pod template")
    for name, policy in by_kind.get("NetworkPolicy", {}).items():
        pods = selected(policy["spec"]["podSelector"].get("matchLabels", {}))
        if not pods:
            problems.append(f"NetworkPolicy {name}: podSelector matches no pod template")
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels")
                if labels and not selected(labels):
                    problems.append(f"NetworkPolicy {name}: a 'from' podSelector {labels} matches no pod template")
            for port in rule.get("ports", []):
                if not all(_has_port(w, port["port"]) for w in pods):
                    problems.append(f"NetworkPolicy {name}: port {port['port']!r} is not a port of every selected pod")
    for w in workloads:
        problems += _workload_problems(w, by_kind)
    for name, binding in by_kind.get("RoleBinding", {}).items():
        if binding["roleRef"]["name"] not in by_kind.get(binding["roleRef"]["kind"], {}):
            ref = binding["roleRef"]
            problems.append(f"RoleBinding {name}: {ref['kind']} {ref['name']} does not exist")
        for s in binding.get("subjects", []):
            if s["kind"] == "ServiceAccount" and s["name"] not in by_kind.get("ServiceAccount", {}):
                problems.append(f"RoleBinding {name}: ServiceAccount {s['name']} does not exist")
    for name, role in by_kind.get("Role", {}).items():
        for rule in role["rules"]:
            for resource in rule["resources"]:
                kind = {"deployments": "Deployment", "deployments/scale": "Deployment"}.get(resource)
                for target in rule.get("resourceNames", []) if kind else []:
                    if target not in by_kind.get(kind, {}):
                        problems.append(f"Role {name}: {resource} {target} does not exist")
    problems += _config_problems(docs, by_kind, parsers)
    return problems


def _workload_problems(w: Doc, by_kind: dict[str, dict[str, Doc]]) -> list[str]:
    name = f"{w['kind']} {w['metadata']['name']}"
    spec = pod_spec(w)
    problems = []
    if not _selects(w["spec"]["selector"].get("matchLabels", {}), _labels(w)):
        problems.append(f"{name}: selector does not match its own pod template")
    account = spec.get("serviceAccountName")
    if account and account not in by_kind.get("ServiceAccount", {}):
        problems.append(f"{name}: serviceAccountName {account} does not exist")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
    for volume in volumes.values():
        cm = volume.get("configMap", {}).get("name")
        if cm and cm not in by_kind.get("ConfigMap", {}):
            problems.append(f"{name}: volume {volume['name']} names ConfigMap {cm}, which does not exist")
        pvc = volume.get("persistentVolumeClaim", {}).get("claimName")
        if pvc and pvc not in by_kind.get("PersistentVolumeClaim", {}):
            problems.append(f"{name}: volume {volume['name']} names PersistentVolumeClaim {pvc}, which does not exist")
    if w["kind"] == "StatefulSet":
        svc = by_kind.get("Service", {}).get(w["spec"]["serviceName"])
        headless = svc is not None and svc["spec"].get("clusterIP") == "None"
        if not headless or not _selects(svc["spec"].get("selector", {}), _labels(w)):
            service = w["spec"]["serviceName"]
            problems.append(f"{name}: serviceName {service} is not a headless Service selecting its pods")
    for c in containers(w):
        env = {e["name"] for e in c.get("env", [])}
        for mount in c.get("volumeMounts", []):
            if mount["name"] not in volumes and mount["name"] not in claims:
                problems.append(f"{name}: container {c['name']} mounts {mount['name']}, which is no volume")
        for which, kind, action in _probes(c):
            if not _has_port(w, action["port"]):
                problems.append(f"{name}: {which} ({kind}) port {action['port']!r} is not a container port")
        for arg in [*c.get("command", []), *c.get("args", [])]:
            for var in re.findall(r"\$\((\w+)\)", arg):
                if var not in env:
                    problems.append(f"{name}: argument {arg!r} uses $({var}), which is not in its env")
            if arg.startswith("--config="):
                path = arg.removeprefix("--config=")
                problems += _config_mount_problems(name, c, volumes, path, by_kind)
    return problems


def _config_mount_problems(name: str, c: Doc, volumes: dict[str, Doc], path: str, by_kind) -> list[str]:
    directory, _, key = path.rpartition("/")
    for mount in c.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if mount["mountPath"] == directory and "configMap" in volume:
            data = by_kind.get("ConfigMap", {}).get(volume["configMap"]["name"], {}).get("data", {})
            if key in data:
                return []
            return [f"{name}: --config={path}: ConfigMap {volume['configMap']['name']} has no key {key}"]
    return [f"{name}: --config={path} is not in a mounted ConfigMap"]


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every long option of ``parser`` and its subcommands, by option string."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            out[option] = action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.update(_flags(sub))
    return out


def _config_problems(docs: list[Doc], by_kind, parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    try:
        config = config_toml(docs)
    except (AssertionError, tomllib.TOMLDecodeError) as exc:
        return [f"xpipe.toml: {exc}"]
    problems = []
    for table, parser in parsers.items():
        flags = _flags(parser)
        for key, value in config.get(table, {}).items():
            if isinstance(value, dict):
                if (table, key) != ("coordinator", "autoscale"):
                    problems.append(f"xpipe.toml [{table}.{key}]: no such table")
                continue
            action = flags.get("--" + key.replace("_", "-"))
            if action is None:
                problems.append(f"xpipe.toml [{table}] {key}: {parser.prog} has no flag --{key.replace('_', '-')}")
            elif not _value_fits(action, value):
                problems.append(f"xpipe.toml [{table}] {key} = {value!r}: not a value --{key.replace('_', '-')} takes")
    for key in set(config.get("coordinator", {}).get("autoscale", {})) - AUTOSCALE_KEYS:
        known = ", ".join(sorted(AUTOSCALE_KEYS))
        problems.append(f"xpipe.toml [coordinator.autoscale] {key}: unknown key (known: {known})")
    store = config.get("coordinator", {}).get("store", "").removeprefix("etcd://")
    addresses = [("[coordinator] store", a) for a in store.split(",") if a]
    addresses += [("[worker] coordinator", a) for a in config.get("worker", {}).get("coordinator", "").split(",") if a]
    addresses += [("[client] coordinator", a) for a in config.get("client", {}).get("coordinator", "").split(",") if a]
    for where, address in addresses:
        problem = _address_problem(address, by_kind)
        if problem:
            problems.append(f"xpipe.toml {where}: {address}: {problem}")
    grace_s = config.get("worker", {}).get("grace_s", parsers["worker"].get_default("grace_s"))
    for d in by_kind.get("Deployment", {}).values():
        if any(c.get("command") == ["xpipe-worker"] for c in containers(d)):
            period = pod_spec(d).get("terminationGracePeriodSeconds", 30)
            if period <= grace_s + WORKER_FLUSH_S:
                problems.append(f"Deployment {d['metadata']['name']}: terminationGracePeriodSeconds {period} leaves no "
                                f"margin over grace_s {grace_s} + {WORKER_FLUSH_S} s of flushing")  # fmt: skip
    return problems


def _value_fits(action: argparse.Action, value: Any) -> bool:
    """Does ``value`` parse the way ``--flag value`` would (or is it a bool for a switch)?"""
    if action.nargs == 0:
        return isinstance(value, bool)
    if isinstance(value, (bool, dict, list)):
        return False
    try:
        parsed = action.type(str(value)) if callable(action.type) else str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False
    return action.choices is None or parsed in action.choices


def _address_problem(address: str, by_kind) -> str | None:
    """None if HOST:PORT is a Service port, or a StatefulSet member behind its headless Service."""
    host, _, port_text = address.rpartition(":")
    if not port_text.isdigit():
        return "no port"
    port = int(port_text)
    parts = host.split(".")
    service_name = parts[-1] if len(parts) == 2 else parts[0]
    svc = by_kind.get("Service", {}).get(service_name)
    if svc is None:
        return f"no Service {service_name}"
    if port not in [p["port"] for p in svc["spec"].get("ports", [])]:
        return f"Service {service_name} has no port {port}"
    if len(parts) == 2:
        member, _, ordinal = parts[0].rpartition("-")
        sets = [s for s in by_kind.get("StatefulSet", {}).values() if s["spec"]["serviceName"] == service_name]
        if not any(s["metadata"]["name"] == member and ordinal.isdigit() and int(ordinal) < s["spec"]["replicas"]
                   for s in sets):  # fmt: skip
            return f"{parts[0]} is not a member of a StatefulSet behind {service_name}"
    elif len(parts) > 2:
        return "use the in-namespace name (SERVICE or POD.SERVICE), so the namespace can be changed"
    return None
