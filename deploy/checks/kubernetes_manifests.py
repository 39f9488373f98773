"""Checks the Kubernetes manifests (every *.yaml of a directory) offline:
  - each resource of a built-in kind validates strictly (unknown fields rejected) against the
    schemas kubernetes-validate ships, for the oldest Kubernetes version supported here and the
    newest it knows;
  - a custom resource has no schema there: the KEDA ScaledObject is checked against the required
    fields and types of KEDA's CRD below, and any other kind without a schema fails, so nothing
    is skipped silently;
  - the wiring between resources: every container's liveness probe is GET /health and readiness
    probe GET /ready on the port its config's [telemetry] listen names; Services, the
    PodDisruptionBudget and NetworkPolicies select pods that exist, by ports they declare; the
    ScaledObject scales an existing Deployment that leaves its replica count to it, up to the
    `partitions` of the workers' config, and watches the consumer group that config names; workloads live in a namespace of the manifests,
    and none in a namespace enforcing the "restricted" Pod Security Standard uses a hostPath volume
    (which that standard refuses).

Usage: kubernetes_manifests.py MANIFEST_DIR   (kubernetes-validate and PyYAML importable)
"""

import re
import sys
import tomllib
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

OLDEST_VERSION = "1.29.0"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def load(directory: Path) -> list:
    resources = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                resources.append((path.name, doc))
    return resources


def name_of(resource: dict) -> str:
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


# KEDA's ScaledObject CRD (keda.sh/v1alpha1), the fields it declares and those it requires. Its
# trigger metadata is a map of strings (a bare number there is refused by the API server).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef": dict, "pollingInterval": int, "initialCooldownPeriod": int, "cooldownPeriod": int,
    "idleReplicaCount": int, "minReplicaCount": int, "maxReplicaCount": int, "advanced": dict,
    "triggers": list, "fallback": dict,
}
SCALE_TARGET_REF = {"name": str, "apiVersion": str, "kind": str, "envSourceContainerName": str}
TRIGGER = {"type": str, "name": str, "metadata": dict, "authenticationRef": dict, "metricType": str,
           "useCachedMetrics": bool}
FALLBACK = {"failureThreshold": int, "replicas": int, "behavior": str}
# The kafka scaler's metadata: required keys, and those that must read as a positive integer.
KAFKA_REQUIRED = ("bootstrapServers", "consumerGroup")
KAFKA_POSITIVE = ("lagThreshold", "activationLagThreshold")


def fields(where: str, value, declared: dict, required: tuple) -> list:
    if not isinstance(value, dict):
        return [f"{where}: must be an object"]
    problems = [f"{where}: missing required field `{key}`" for key in required if key not in value]
    for key, item in value.items():
        if key not in declared:
            problems.append(f"{where}: unknown field `{key}`")
        elif not isinstance(item, declared[key]) or (declared[key] is int and isinstance(item, bool)):
            problems.append(f"{where}.{key}: must be {declared[key].__name__}, is {item!r}")
    return problems


def check_scaled_object(resource: dict, index: dict) -> list:
    where = name_of(resource)
    if resource.get("apiVersion") != "keda.sh/v1alpha1":
        return [f"{where}: apiVersion must be keda.sh/v1alpha1"]
    spec = resource.get("spec")
    problems = fields(f"{where} spec", spec, SCALED_OBJECT_SPEC, ("scaleTargetRef", "triggers"))
    if problems:
        return problems
    problems += fields(f"{where} spec.scaleTargetRef", spec["scaleTargetRef"], SCALE_TARGET_REF, ("name",))
    if "fallback" in spec:
        problems += fields(f"{where} spec.fallback", spec["fallback"], FALLBACK, ("failureThreshold", "replicas"))
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not 1 <= low <= high:
        problems.append(f"{where}: needs 1 <= minReplicaCount <= maxReplicaCount, has {low} and {high}")
    if not spec["triggers"]:
        problems.append(f"{where}: spec.triggers is empty")
    target_kind = spec["scaleTargetRef"].get("kind", "Deployment")
    target = index.get((target_kind, resource["metadata"].get("namespace"), spec["scaleTargetRef"].get("name")))
    if target is None:
        problems.append(f"{where}: scales {target_kind}/{spec['scaleTargetRef'].get('name')}, which is not in the manifests")
    elif "replicas" in target["spec"]:
        problems.append(f"{where}: {name_of(target)} sets spec.replicas, which would fight the autoscaler on every apply")
    for i, trigger in enumerate(spec["triggers"]):
        at = f"{where} spec.triggers[{i}]"
        found = fields(at, trigger, TRIGGER, ("type", "metadata"))
        problems += found
        if found:
            continue
        for key, value in trigger["metadata"].items():
            if not isinstance(value, str):
                problems.append(f"{at}.metadata.{key}: must be a string (quote it), is {value!r}")
        if trigger["type"] != "kafka":
            continue
        metadata = trigger["metadata"]
        problems += [f"{at}: the kafka trigger needs metadata.{key}" for key in KAFKA_REQUIRED if not metadata.get(key)]
        for key in KAFKA_POSITIVE:
            if key in metadata and not re.fullmatch(r"[1-9][0-9]*", str(metadata[key])):
                problems.append(f"{at}.metadata.{key}: must be a positive integer, is {metadata[key]!r}")
        if target is not None and metadata.get("consumerGroup"):
            for container, config in configs_of(target, index):
                group = config.get("group", "logpipe-cep")
                if metadata["consumerGroup"] != group:
                    problems.append(f"{at}: watches group {metadata['consumerGroup']!r}, but {container} consumes as {group!r}")
    if target is not None:
        for container, config in configs_of(target, index):
            partitions = config.get("partitions", 12)
            if high != partitions:
                problems.append(f"{where}: maxReplicaCount {high} is not the {partitions} partitions {container} shares its work over")
    return problems


# Kinds without a schema in kubernetes-validate, and their own check.
CUSTOM_KINDS = {"ScaledObject": check_scaled_object}


def pod_of(workload: dict) -> dict:
    return workload["spec"]["template"]


def configs_of(workload: dict, index: dict):
    """(container label, parsed TOML) of each container that runs `<binary> run --config FILE`
    with FILE from a ConfigMap of the manifests."""
    namespace = workload["metadata"].get("namespace")
    pod = pod_of(workload)["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        command = container.get("command", [])
        label = f"{name_of(workload)} container {container['name']}"
        if "--config" not in command:
            continue
        path = command[command.index("--config") + 1]
        for mount in container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            volume = volumes.get(mount["name"], {})
            if path.startswith(prefix) and "configMap" in volume:
                config_map = index.get(("ConfigMap", namespace, volume["configMap"]["name"]))
                text = (config_map or {}).get("data", {}).get(path[len(prefix):])
                if text is not None:
                    yield label, tomllib.loads(text)


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    return None


def check_workload(workload: dict, index: dict) -> list:
    problems = []
    pod = pod_of(workload)["spec"]
    namespace = index.get(("Namespace", None, workload["metadata"].get("namespace")))
    if namespace is None:
        problems.append(f"{name_of(workload)}: its namespace {workload['metadata'].get('namespace')!r} is not in the manifests")
    elif namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted":
        problems += [f"{name_of(workload)}: hostPath volume {v['name']} in a namespace enforcing restricted"
                     for v in pod.get("volumes", []) if "hostPath" in v]
    configs = dict(configs_of(workload, index))
    for container in pod["containers"]:
        label = f"{name_of(workload)} container {container['name']}"
        config = configs.get(label)
        if config is None:
            problems.append(f"{label}: runs no `--config FILE` from a ConfigMap of the manifests")
            continue
        listen = config.get("telemetry", {}).get("listen", "")
        telemetry = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            get = container.get(probe, {}).get("httpGet")
            if not get:
                problems.append(f"{label}: no HTTP {probe}")
                continue
            if get.get("path") != path:
                problems.append(f"{label}: {probe} must GET {path}, gets {get.get('path')}")
            if port_number(container, get.get("port")) != telemetry:
                problems.append(f"{label}: {probe} port {get.get('port')} is not the telemetry port {telemetry} of its config")
        if not listen.startswith(("0.0.0.0:", "[::]:")):
            problems.append(f"{label}: [telemetry] listen {listen!r} is not reachable by the kubelet's probes")
    return problems


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(resource: dict, workloads: list) -> list:
    where = name_of(resource)
    spec = resource["spec"]
    selector = spec.get("selector") if resource["kind"] == "Service" else spec.get("podSelector", spec.get("selector", {})).get("matchLabels")
    matched = [w for w in workloads
               if w["metadata"].get("namespace") == resource["metadata"].get("namespace")
               and selects(selector, pod_of(w)["metadata"].get("labels", {}))]
    if not matched:
        return [f"{where}: selects no pod of the manifests ({selector})"]
    declared = {p.get("name") for w in matched for c in pod_of(w)["spec"]["containers"] for p in c.get("ports", [])}
    declared |= {p["containerPort"] for w in matched for c in pod_of(w)["spec"]["containers"] for p in c.get("ports", [])}
    if resource["kind"] == "Service":
        ports = [p.get("targetPort", p["port"]) for p in spec.get("ports", [])]
    elif resource["kind"] == "NetworkPolicy":
        ports = [p["port"] for rule in spec.get("ingress", []) for p in rule.get("ports", []) if "port" in p]
    else:
        ports = []
    return [f"{where}: port {port} is not declared by the pods it selects" for port in ports if port not in declared]


def main(directory: str) -> int:
    resources = load(Path(directory))
    versions = [OLDEST_VERSION, kv.latest_version()]
    index = {(r.get("kind"), r.get("metadata", {}).get("namespace"), r.get("metadata", {}).get("name")): r
             for _, r in resources}
    problems = []
    for filename, resource in resources:
        where = f"{filename}: {name_of(resource)}"
        if resource.get("kind") in CUSTOM_KINDS:
            problems += [f"{filename}: {p}" for p in CUSTOM_KINDS[resource["kind"]](resource, index)]
            continue
        for version in versions:
            try:
                kv.validate(resource, version, strict=True)
            except kv.SchemaNotFoundError:
                problems.append(f"{where}: no schema for {resource.get('apiVersion')} {resource.get('kind')} in Kubernetes {version}, and no check here")
                break
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{where}: invalid for Kubernetes {version}: {path}: {e.message}")
    workloads = [r for _, r in resources if r.get("kind") in WORKLOADS]
    for workload in workloads:
        problems += check_workload(workload, index)
    for _, resource in resources:
        if resource.get("kind") in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            problems += check_selectors(resource, workloads)
    for problem in problems:
        print(problem)
    kinds = sorted({r.get("kind") for _, r in resources})
    print(f"kubernetes: {len(resources)} resources ({', '.join(kinds)}) checked against Kubernetes "
          f"{' and '.join(v.rsplit('.', 1)[0] for v in versions)}, {len(problems)} problems")
    return 1 if problems or not workloads else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
