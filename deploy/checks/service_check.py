"""Runs a service's real `check` command on a config file and reports the outcome on one line
(plus the service's own message when the config is refused)."""

import os
import subprocess
from pathlib import Path


def check_config(bin_dir: str, binary: str, config: str, label: str, env: dict | None = None) -> bool:
    """`env` adds variables to the environment the check runs with (for `${VAR}` references)."""
    result = subprocess.run([str(Path(bin_dir) / binary), "check", "--config", config], capture_output=True, text=True,
                            env={**os.environ, **env} if env else None)
    if result.returncode == 0:
        print(f"{label}: {binary} check: ok")
        return True
    print(f"{label}: {binary} check: FAILED (exit {result.returncode})")
    print(result.stdout + result.stderr, end="")
    return False
