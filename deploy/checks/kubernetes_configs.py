"""Every container of the Kubernetes manifests runs `<binary> run --config FILE` with FILE from a
ConfigMap; this writes each ConfigMap mounted into the container to a temporary directory and runs
the real `<binary> check --config` on FILE there, so the configs the manifests ship cannot drift
from what the services accept. Paths inside the config under a ConfigMap's mount point (the CEP
worker's rules_file) are pointed at the temporary copies; the container's environment is given
to the check, with example values for what only the cluster knows (Secrets, the node's name).

Usage: kubernetes_configs.py MANIFEST_DIR BIN_DIR
"""

import sys
import tempfile
from pathlib import Path

from kubernetes_manifests import WORKLOADS, load, name_of, pod_of
from service_check import check_config

# Example values of the Secret keys the manifests reference, shaped like the real ones.
SECRET_EXAMPLES = {
    "admin-password-hash": "$argon2id$v=19$m=19456,t=2,p=1$UNR41+yZtSV5tjOppUb1QQ$MIqIUrWLPy0erqcUkGecfpvEdZnrh/MDrOonMDqrBpk",
}
FIELD_EXAMPLES = {"spec.nodeName": "node-1", "metadata.name": "pod-0", "metadata.namespace": "logpipe"}


def environment(container: dict) -> tuple[dict, list]:
    env, problems = {}, []
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in source and source["secretKeyRef"]["key"] in SECRET_EXAMPLES:
            env[var["name"]] = SECRET_EXAMPLES[source["secretKeyRef"]["key"]]
        elif "fieldRef" in source and source["fieldRef"]["fieldPath"] in FIELD_EXAMPLES:
            env[var["name"]] = FIELD_EXAMPLES[source["fieldRef"]["fieldPath"]]
        else:
            problems.append(f"no example value for {var['name']} ({source}): add one here")
    return env, problems


def main(directory: str, bin_dir: str) -> int:
    resources = [r for _, r in load(Path(directory))]
    config_maps = {(r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in resources if r["kind"] == "ConfigMap"}
    failures = checked = 0
    for workload in (r for r in resources if r["kind"] in WORKLOADS):
        pod = pod_of(workload)["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            label = f"kubernetes {name_of(workload)} container {container['name']}"
            command = container.get("command", [])
            if len(command) != 4 or not command[0].startswith("logpipe-") or command[1:3] != ["run", "--config"]:
                print(f"{label}: command must be `logpipe-<service> run --config FILE`, is {command}")
                failures += 1
                continue
            env, problems = environment(container)
            for problem in problems:
                print(f"{label}: {problem}")
                failures += 1
            with tempfile.TemporaryDirectory() as work:
                mounts = {}
                for i, mount in enumerate(container.get("volumeMounts", [])):
                    source = volumes.get(mount["name"], {}).get("configMap")
                    config_map = source and config_maps.get((workload["metadata"].get("namespace"), source["name"]))
                    if config_map:
                        copy = Path(work, str(i))
                        copy.mkdir()
                        for key, text in config_map.get("data", {}).items():
                            (copy / key).write_text(text)
                        mounts[mount["mountPath"].rstrip("/") + "/"] = str(copy) + "/"
                config = command[3]
                prefix = next((p for p in mounts if config.startswith(p)), None)
                copied = prefix and Path(mounts[prefix], config[len(prefix):])
                if not copied or not copied.is_file():
                    print(f"{label}: {config} is not a key of a ConfigMap mounted into the container")
                    failures += 1
                    continue
                text = copied.read_text()
                for mount_path, copy in mounts.items():
                    text = text.replace(f'"{mount_path}', f'"{copy}')
                copied.write_text(text)
                checked += 1
                if not check_config(bin_dir, command[0], str(copied), f"{label} ({config})", env):
                    failures += 1
    if checked == 0:
        print("no logpipe service config found in the manifests")
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
