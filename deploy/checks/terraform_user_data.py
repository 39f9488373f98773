"""Renders the instances' user data templates with Terraform itself (a configuration without
providers applies offline) and checks that each result is a bash script that parses, so a
`${...}` meant for the shell cannot silently become a template reference or a syntax error.

Usage: terraform_user_data.py MODULES_DIR   (terraform on PATH)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Template -> example variables, shaped like what the module passes.
ATTACH = 'file("{modules}/instance_group/attach-volume.sh")'
TEMPLATES = {
    "kafka_cluster/user_data.sh.tftpl": {
        "node_id": "1", "cluster_id": '"bG9ncGlwZS13cml0ZS0wMQ"', "voters": '"1@10.40.0.10:9093,2@10.40.16.10:9093"',
        "advertised_host": '"10.40.0.10"', "eni_id": '"eni-0123"', "volume_id": '"vol-0123"', "attach_volume": ATTACH,
        "kafka_version": '"4.1.0"', "kafka_sha512": '"00ff"', "port": "9092", "controller_port": "9093",
        "replication": "3", "min_insync": "2",
    },
    "services/user_data.sh.tftpl": {
        "service": '"schema-store"', "config": '"listen = \\"0.0.0.0:8081\\""', "unit": '"[Unit]"',
        "hardening": '"[Service]"', "release_url": '"https://example.invalid/logpipe.tar.gz"',
        "release_sha256": '"00ff"', "data_volume_id": '"vol-0456"', "attach_volume": ATTACH,
    },
}


def main(modules_dir: str) -> int:
    modules = Path(modules_dir).resolve()
    outputs = []
    for i, (template, variables) in enumerate(TEMPLATES.items()):
        args = ", ".join(f"{k} = {v.format(modules=modules)}" for k, v in variables.items())
        outputs.append(f'output "t{i}" {{\n  value = templatefile("{modules / template}", {{ {args} }})\n}}\n')
    with tempfile.TemporaryDirectory() as work:
        Path(work, "main.tf").write_text("".join(outputs))
        applied = subprocess.run(["terraform", "apply", "-auto-approve", "-input=false", "-no-color"], cwd=work, capture_output=True, text=True)
        if applied.returncode != 0:
            print(applied.stdout + applied.stderr)
            return 1
        rendered = json.loads(subprocess.run(["terraform", "output", "-json"], cwd=work, check=True, capture_output=True, text=True).stdout)
    failures = 0
    for i, template in enumerate(TEMPLATES):
        parsed = subprocess.run(["bash", "-n"], input=rendered[f"t{i}"]["value"], capture_output=True, text=True)
        if parsed.returncode == 0:
            print(f"terraform {template}: renders to a bash script that parses")
        else:
            print(f"terraform {template}: rendered script does not parse:\n{parsed.stderr}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
